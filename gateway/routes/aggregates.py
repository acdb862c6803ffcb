"""Aggregate routes, declared as parts (`gateway/composer.py` runs them).

- `GET /v1/users/{user_id}/dashboard`: the user (required), their orders and the stock their open
  orders hold (optional), fetched at once; a partial answer says which parts are missing.
- `POST /v1/orders/validate`: the user, credit and stock checks of `POST /v1/orders` in one task
  group, without placing anything; the first failure cancels the other checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.responses import Response

from gateway.composer import (
    DOWNSTREAM_REFUSED,
    Call,
    CheckFailed,
    CheckStatus,
    Fetch,
    Part,
    PartStatus,
    UpstreamRefused,
    get_json,
    json_object,
    model_response,
    page_of,
)
from gateway.deps import ComposerDep, RequireAccess, UsageDep
from gateway.edge.access import Access
from gateway.edge.metering import QuotaUse
from gateway.openapi import model_example, operation_docs
from services.orders.errors import UnknownUser
from services.orders.schemas import OrderCreate, OrderOut
from services.users.errors import UserNotFound
from services.users.schemas import UserOut
from shared.contract import (
    AGGREGATE_COMPLETE_HEADER,
    MAX_ITEMS,
    ORDERS_READ,
    ORDERS_WRITE,
    USAGE_READ,
    USERS_READ,
    CreditLimitExceeded,
    Identity,
    LineItems,
    ResourceIdPath,
    key_id_of,
)
from shared.errors import UpstreamBadResponse
from shared.pagination import Page
from shared.schemas import with_examples

router = APIRouter(prefix="/v1", tags=["aggregates"])

OrdersReader = Annotated[Identity, Depends(RequireAccess(Access(scope=ORDERS_READ)))]
OrdersWriter = Annotated[Identity, Depends(RequireAccess(Access(scope=ORDERS_WRITE)))]


async def _users_and_orders_reader(identity: OrdersReader) -> Identity:
    identity.require_scope(USERS_READ)
    return identity


DashboardReader = Annotated[Identity, Depends(_users_and_orders_reader)]
# The dashboard of the caller's own user: `/v1/users/me/dashboard`.
ME = "me"
# The reservations part reads one page of the user's open reservations, this many: the dashboard lists
# at most 100 (`next_cursor` says when there are more), more than a list's DEFAULT_LIMIT page and
# within the MAX_LIMIT the inventory service's lists take (shared/pagination.py).
RESERVATIONS_PAGE_LIMIT = 100

# --------------------------------------------------------------------------- dashboard


# A status is documented as a string, its values in the field's description (not as an enum).
PlainStatus = WithJsonSchema({"type": "string"})


class PartOutcome(BaseModel):
    """How one part of an aggregate ended."""

    status: Annotated[PartStatus, PlainStatus] = Field(
        description="`ok`, or how the part failed: `error` (refused or a bad answer), `timeout`, or "
        "`skipped` (its service's circuit is open)."
    )
    service: str
    elapsed_ms: float
    error_code: str | None = Field(
        default=None,
        exclude_if=lambda code: code is None,
        description="Only for a part that failed: what its failure would answer (`DOWNSTREAM_TIMEOUT`, "
        "`CIRCUIT_OPEN`, `DOWNSTREAM_BAD_RESPONSE`, ...), or its service's own code when the service refused "
        f"the call (a 4xx); `{DOWNSTREAM_REFUSED}` when that refusal names none.",
    )


class ReservedStock(BaseModel):
    order_id: str
    product_id: str
    quantity: int


class ReservedStockPage(BaseModel):
    items: list[ReservedStock]
    next_cursor: str | None


class Dashboard(BaseModel):
    """The answer of the dashboard: each optional part is null when it failed (see `parts`)."""

    model_config = with_examples(
        {
            "user": model_example(UserOut),
            "orders": model_example(Page[OrderOut]),
            "reservations": None,
            "parts": {
                "user": {"status": "ok", "service": "users", "elapsed_ms": 4.2},
                "orders": {"status": "ok", "service": "orders", "elapsed_ms": 7.9},
                "reservations": {
                    "status": "timeout",
                    "service": "inventory",
                    "elapsed_ms": 500.0,
                    "error_code": "DOWNSTREAM_TIMEOUT",
                },
            },
        }
    )

    user: UserOut
    orders: Page[OrderOut] | None
    reservations: ReservedStockPage | None
    parts: dict[str, PartOutcome]
    # The tenant's use of its monthly quota, for a caller that may read it (`usage:read`); else null.
    usage: QuotaUse | None = None


def reserved_stock(body: Any) -> ReservedStockPage:
    """A page of reservations, as the lines they hold."""
    page = page_of(body)
    lines = [
        ReservedStock(order_id=reservation["order_id"], product_id=line["product_id"], quantity=line["quantity"])
        for reservation in page["items"]
        for line in reservation["items"]
    ]
    return ReservedStockPage(items=lines, next_cursor=page["next_cursor"])


async def user_id(call: Call) -> str:
    """The user the dashboard is of: `me` is the caller's own user (a user's token names it; for an
    API key, the users service says whose key it is, in the user part's answer)."""
    wanted = call.params["user_id"]
    if wanted != ME:
        return wanted
    if not call.identity.is_service and key_id_of(call.identity.subject) is None:
        return call.identity.subject
    user: UserOut = await call.value_of("user")
    return user.id


def of_user(path: str, query: dict[str, str], shape: Callable[[Any], Any]) -> Fetch:
    """A part that GETs `path` with `query` and the dashboard's user as `user_id`."""

    async def fetch(call: Call) -> Any:
        return shape(await call.json("GET", path, params={**query, "user_id": await user_id(call)}))

    return fetch


def orders_page(body: Any) -> Page[OrderOut]:
    return Page[OrderOut].model_validate(page_of(body))


DASHBOARD = (
    Part("user", "users", get_json("/users/{user_id}", shape=UserOut.model_validate), required=True),
    Part("orders", "orders", of_user("/orders", {}, orders_page)),
    Part(
        "reservations",
        "inventory",
        of_user("/reservations", {"open": "true", "limit": str(RESERVATIONS_PAGE_LIMIT)}, reserved_stock),
    ),
)


DASHBOARD_DOCS = operation_docs("GET", status_code=200, credentials="any", errors=[UserNotFound], answer=Dashboard)
DASHBOARD_DOCS["responses"][200].update(
    description="Every part that answered; `X-Aggregate-Complete: false` when one did not.",
    headers={
        **DASHBOARD_DOCS["responses"][200]["headers"],
        AGGREGATE_COMPLETE_HEADER: {
            "description": "`false` when an optional part is missing from the answer.",
            "schema": {"type": "string", "enum": ["true", "false"]},
        },
    },
)


@router.get(
    "/users/{user_id}/dashboard",
    name="user_dashboard",
    operation_id="user_dashboard",
    summary="A user with their orders and reserved stock, fetched at once; partial when a part fails",
    description=(
        "The user (`me` for the caller's own), their latest orders and the stock their open orders hold, "
        "fetched from the users, orders and inventory services at once. The user is required (404 "
        "`USER_NOT_FOUND`); when the orders or inventory part fails or is too slow, the answer is still 200 "
        "with that part `null`, `X-Aggregate-Complete: false`, and `parts` saying how each part ended. "
        "Needs the `users:read` and `orders:read` scopes."
    ),
    response_model=Dashboard,
    **DASHBOARD_DOCS,
)
async def dashboard(
    user_id: ResourceIdPath, composer: ComposerDep, identity: DashboardReader, usage: UsageDep
) -> Response:
    outcomes = await composer.gather(DASHBOARD, identity, {"user_id": user_id})
    quota = None
    if USAGE_READ in identity.scopes and identity.tenant_id is not None:
        quota = await usage.quota(identity)
    answer = Dashboard(
        user=outcomes["user"].value,
        orders=outcomes["orders"].value,
        reservations=outcomes["reservations"].value,
        parts={name: PartOutcome.model_validate(outcome, from_attributes=True) for name, outcome in outcomes.items()},
        usage=quota,
    )
    complete = all(outcome.status == "ok" for outcome in outcomes.values())
    return model_response(answer, headers={AGGREGATE_COMPLETE_HEADER: "true" if complete else "false"})


# --------------------------------------------------------------------------- order validation


class OrderDraft(BaseModel):
    """The body of `POST /v1/orders`."""

    model_config = with_examples(model_example(OrderCreate), extra="forbid")

    items: LineItems


async def check_user(call: Call) -> dict[str, Any]:
    try:
        return json_object(await call.json("GET", "/users/me"))
    except UpstreamRefused as refused:
        if refused.response.status_code == 404:
            gone = "The user these credentials were issued to no longer exists."
            raise CheckFailed(UnknownUser.error_code, gone) from None
        raise


async def check_stock(call: Call) -> int:
    """Every line in stock now; answers the order's total."""
    try:
        body = json_object(await call.json("POST", "/stock-checks", json=call.body))
    except UpstreamRefused as refused:
        if refused.response.status_code in (404, 409, 422):
            raise CheckFailed.from_refusal(refused) from None
        raise
    total = body.get("total_cents")
    if not isinstance(total, int) or isinstance(total, bool):
        raise UpstreamBadResponse("inventory", "The inventory service answered in an unexpected shape.")
    return total


async def check_credit(call: Call) -> dict[str, Any]:
    """The user's open orders and this one within their credit limit (the total comes from the stock
    check, which runs meanwhile)."""
    try:
        credit = json_object(await call.json("GET", "/credit"))
        limit, open_cents = int(credit["credit_limit_cents"]), int(credit["open_cents"])
    except UpstreamRefused as refused:
        if refused.response.status_code == 404 or refused.error_code == UnknownUser.error_code:
            raise CheckFailed(refused.error_code, refused.detail) from None
        raise
    total: int = await call.value_of("stock")
    if open_cents + total > limit:
        exceeded = CreditLimitExceeded.of(limit, open_cents, total)
        raise CheckFailed(exceeded.code, exceeded.detail)
    return {"credit_limit_cents": limit, "open_cents": open_cents, "total_cents": total}


ORDER_CHECKS = (
    Part("user", "users", check_user),
    Part("credit", "orders", check_credit),
    Part("stock", "inventory", check_stock),
)


class CheckFailure(BaseModel):
    check: str
    error_code: str | None = Field(
        description="What placing the order would answer: the code of the check's verdict, or of its "
        f"service's refusal (a 4xx); `{DOWNSTREAM_REFUSED}` when that refusal names none."
    )
    detail: str | None


class CheckOutcome(BaseModel):
    status: Annotated[CheckStatus, PlainStatus] = Field(
        description="`passed`, `failed`, or `cancelled` when another check failed first."
    )
    service: str
    elapsed_ms: float


class OrderValidation(BaseModel):
    model_config = with_examples(
        {
            "valid": False,
            "total_cents": 3998,
            "checks": {"user": "passed", "credit": "failed", "stock": "passed"},
            "failures": [
                {
                    "check": "credit",
                    "error_code": "CREDIT_LIMIT_EXCEEDED",
                    "detail": "This order of 3998 cents and the user's open orders of 98000 cents would "
                    "exceed the credit limit of 100000 cents.",
                }
            ],
            "details": {
                "user": {"status": "passed", "service": "users", "elapsed_ms": 3.1},
                "credit": {"status": "failed", "service": "orders", "elapsed_ms": 9.4},
                "stock": {"status": "passed", "service": "inventory", "elapsed_ms": 6.8},
            },
        }
    )

    valid: bool
    total_cents: int | None
    checks: dict[str, Annotated[CheckStatus, PlainStatus]]
    failures: list[CheckFailure]
    details: dict[str, CheckOutcome]


VALIDATE_DOCS = operation_docs("POST", status_code=200, credentials="any", parses_body=True, answer=OrderValidation)


@router.post(
    "/orders/validate",
    name="validate_order",
    operation_id="validate_order",
    summary=f"Check an order (up to {MAX_ITEMS} lines) as POST /v1/orders would, without placing it",
    description=(
        "Runs the checks `POST /v1/orders` would (the user exists, every line is in stock now, the order "
        "fits the user's credit) at once, and places nothing: nothing is reserved, so a later order may "
        "still be refused. The first check that fails cancels the others. A failed check is not an "
        "error: the answer is 200 with `valid: false` and the `failures` (their `error_code` is what "
        f"placing the order would answer, or `{DOWNSTREAM_REFUSED}` when a service refused a check without "
        "naming a code)."
    ),
    response_model=OrderValidation,
    **VALIDATE_DOCS,
)
async def validate_order(draft: OrderDraft, composer: ComposerDep, identity: OrdersWriter) -> Response:
    outcomes = await composer.all_or_nothing(ORDER_CHECKS, identity, {}, draft.model_dump())
    stock = outcomes["stock"]
    failures = [
        CheckFailure(check=name, error_code=outcome.error_code, detail=outcome.detail)
        for name, outcome in outcomes.items()
        if outcome.status == "failed"
    ]
    answer = OrderValidation(
        valid=not failures and all(outcome.status == "passed" for outcome in outcomes.values()),
        total_cents=stock.value if stock.status == "passed" else None,
        checks={name: outcome.status for name, outcome in outcomes.items()},
        failures=failures,
        details={
            name: CheckOutcome.model_validate(outcome, from_attributes=True) for name, outcome in outcomes.items()
        },
    )
    return model_response(answer)
