"""The errors the orders service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.contract import CreditLimitExceeded, IdempotencyKeyInUse, IdempotencyKeyReused, InsufficientScope
from shared.errors import Conflict, Forbidden, NotFound, PorticoError, ServiceUnavailable, ValidationFailed
from shared.pagination import InvalidCursor


class OrderNotFound(NotFound, code="ORDER_NOT_FOUND", title="Order not found", resource="order"):
    """No such order in the caller's tenant."""


class OrderAlreadyCancelled(Conflict, code="ORDER_ALREADY_CANCELLED", title="Order already cancelled"):
    """Cancelling an order that is already cancelled."""


class OrderAttemptExpired(ServiceUnavailable, code="ORDER_ATTEMPT_EXPIRED", title="Order attempt expired"):
    """The order's attempt was given up by the recovery task while its request still ran: retry with
    the same `Idempotency-Key`."""


class EventsBusy(ServiceUnavailable, code="EVENTS_BUSY", title="Event feed busy"):
    """The event feed waited `ORDERS_EVENTS_LOCK_TIMEOUT_MS` for order transactions in flight:
    `Retry-After: 1`."""


class OrdersBusy(ServiceUnavailable, code="ORDERS_BUSY", title="Too many orders in progress"):
    """Too many orders are being placed at once: no slot within `ORDERS_PLACEMENT_QUEUE_SECONDS`,
    `Retry-After: 1`."""


class ServiceOnly(Forbidden, code="SERVICE_ONLY", title="Forbidden", slug="forbidden"):
    """The internal event feed was asked by a caller that is not one of Portico's services."""


class UnknownUser(Forbidden, code="UNKNOWN_USER", title="Unknown user"):
    """The token's user no longer exists."""


class ReservationRefused(PorticoError):
    """The inventory service answered and took no stock: nothing needs releasing."""


class ProductNotFound(ReservationRefused, NotFound, code="PRODUCT_NOT_FOUND", title="Product not found"):
    """An order line names a product that does not exist in the tenant (`items.N.product_id`)."""


class StockConflict(ReservationRefused, Conflict, code="INSUFFICIENT_STOCK", title="Insufficient stock"):
    """An order asks for more units than a product has in stock (`items.N.quantity`, with
    `available`)."""


class ReservationInvalid(ReservationRefused, ValidationFailed):
    pass


# The errors each route answers besides the common ones (422 for a parameter or body, 403 for a scope
# the caller lacks), declared once: the route's `responses=` here and the gateway's `Forward` row for
# it both list these, so the two documents agree.
CREATE_ORDER_ERRORS = (
    ProductNotFound,
    StockConflict,
    UnknownUser,
    CreditLimitExceeded,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    OrdersBusy,
    OrderAttemptExpired,
)
LIST_ORDERS_ERRORS = (InvalidCursor,)
GET_ORDER_ERRORS = (OrderNotFound,)
CANCEL_ORDER_ERRORS = (OrderNotFound, OrderAlreadyCancelled)
# The feed serves Portico's services only, each with its scope.
READ_EVENTS_ERRORS = (ServiceOnly, InsufficientScope, EventsBusy)
PUBLISH_EVENT_ERRORS = (ServiceOnly, InsufficientScope)
