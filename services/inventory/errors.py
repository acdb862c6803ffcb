"""The errors the inventory service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, NotFound, PorticoError
from shared.pagination import InvalidCursor


class ProductNotFound(NotFound, code="PRODUCT_NOT_FOUND", title="Product not found", resource="product"):
    """No such product in the caller's tenant."""


class ReservationNotFound(
    NotFound, code="RESERVATION_NOT_FOUND", title="Reservation not found", resource="reservation"
):
    """No such reservation."""


class InsufficientStock(Conflict, code="INSUFFICIENT_STOCK", title="Insufficient stock"):
    """Not enough stock for a reservation or a negative adjustment."""


class StockLimitExceeded(Conflict, code="STOCK_LIMIT_EXCEEDED", title="Stock limit exceeded"):
    """An adjustment would take a product's stock above 1,000,000,000 units."""


class ReservationReleased(Conflict, code="RESERVATION_RELEASED", title="Reservation already released"):
    """A reserve call for an order whose reservation was already released (the order was given up)."""


class ReservationMismatch(Conflict, code="RESERVATION_MISMATCH", title="Order already has a different reservation"):
    """A reserve call for an order that already holds a reservation of other items."""


class SkuTaken(Conflict, code="SKU_TAKEN", title="SKU already in use"):
    """A product with this SKU already exists in the tenant."""


# The errors each route answers besides the common ones (422 for a parameter or body, 403 for a scope
# the caller lacks), declared once: the route's `responses=` here and the gateway's `Forward` row for
# it both list these, so the two documents agree.
LIST_PRODUCTS_ERRORS = (InvalidCursor,)
CREATE_PRODUCT_ERRORS = (SkuTaken,)
GET_PRODUCT_ERRORS = (ProductNotFound,)
UPDATE_PRODUCT_ERRORS = (ProductNotFound, SkuTaken)
ADJUST_STOCK_ERRORS = (ProductNotFound, InsufficientStock, StockLimitExceeded)
LIST_ADJUSTMENTS_ERRORS = (ProductNotFound, InvalidCursor)
# The orders service's calls.
RESERVE_ERRORS = (ProductNotFound, InsufficientStock, ReservationReleased, ReservationMismatch)
LIST_RESERVATIONS_ERRORS = (InvalidCursor,)
CHECK_STOCK_ERRORS = (ProductNotFound, InsufficientStock)
GET_RESERVATION_ERRORS = (ReservationNotFound,)
CONFIRM_RESERVATION_ERRORS = (ReservationNotFound, ReservationReleased)
RELEASE_RESERVATION_ERRORS = (ReservationNotFound,)
RELEASE_ORDER_RESERVATION_ERRORS: tuple[type[PorticoError], ...] = ()
