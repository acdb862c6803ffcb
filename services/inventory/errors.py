"""The errors the inventory service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, NotFound


class ProductNotFound(NotFound, code="PRODUCT_NOT_FOUND", title="Product not found", resource="product"): ...


class ReservationNotFound(
    NotFound, code="RESERVATION_NOT_FOUND", title="Reservation not found", resource="reservation"
): ...


class InsufficientStock(Conflict, code="INSUFFICIENT_STOCK", title="Insufficient stock"): ...


class StockLimitExceeded(Conflict, code="STOCK_LIMIT_EXCEEDED", title="Stock limit exceeded"): ...


class ReservationReleased(Conflict, code="RESERVATION_RELEASED", title="Reservation already released"): ...


class ReservationMismatch(Conflict, code="RESERVATION_MISMATCH", title="Order already has a different reservation"): ...


class SkuTaken(Conflict, code="SKU_TAKEN", title="SKU already in use"): ...
