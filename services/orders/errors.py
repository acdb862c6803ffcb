"""The errors the orders service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, Forbidden, NotFound, PorticoError, ServiceUnavailable, ValidationFailed


class OrderNotFound(NotFound, code="ORDER_NOT_FOUND", title="Order not found", resource="order"): ...


class OrderAlreadyCancelled(Conflict, code="ORDER_ALREADY_CANCELLED", title="Order already cancelled"): ...


class OrderAttemptExpired(ServiceUnavailable, code="ORDER_ATTEMPT_EXPIRED", title="Order attempt expired"): ...


class EventsBusy(ServiceUnavailable, code="EVENTS_BUSY", title="Event feed busy"): ...


class OrdersBusy(ServiceUnavailable, code="ORDERS_BUSY", title="Too many orders in progress"): ...


class UnknownUser(Forbidden, code="UNKNOWN_USER", title="Unknown user"): ...


class ReservationRefused(PorticoError):
    """The inventory service answered and took no stock: nothing needs releasing."""


class ProductNotFound(ReservationRefused, NotFound, code="PRODUCT_NOT_FOUND", title="Product not found"): ...


class StockConflict(ReservationRefused, Conflict, code="INSUFFICIENT_STOCK", title="Insufficient stock"): ...


class ReservationInvalid(ReservationRefused, ValidationFailed):
    pass
