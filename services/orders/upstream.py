"""Calls to the users and inventory services, and what their answers mean here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import httpx
from pydantic import ValidationError

from services.orders.errors import ProductNotFound, ReservationInvalid, ReservationRefused, StockConflict, UnknownUser
from services.orders.schemas import ReservationIn
from shared.contract import Identity, LineItem
from shared.errors import (
    UpstreamBadResponse,
)
from shared.http import ServiceClient
from shared.request_id import request_id_headers

REFUSALS: dict[int, type[ReservationRefused]] = {404: ProductNotFound, 409: StockConflict, 422: ReservationInvalid}


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _unexpected(client: ServiceClient, response: httpx.Response, what: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(client.name, f"The {client.name} service answered {response.status_code} to {what}.")


class CheckedUser(NamedTuple):
    id: str
    credit_limit_cents: int


async def check_user(users: ServiceClient, identity: Identity) -> CheckedUser:
    """The caller must still be a user of its tenant; answers the user and the credit limit in force."""
    response = await users.send("GET", "/users/me", identity=identity, headers=request_id_headers())
    if response.status_code == 404:
        raise UnknownUser("The user these credentials were issued to no longer exists.")
    if response.status_code != 200:
        raise _unexpected(users, response, "the user check")
    body = _problem(response)
    user_id, limit = body.get("id"), body.get("credit_limit_cents")
    if not isinstance(user_id, str) or not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise _unexpected(users, response, "the user check")
    return CheckedUser(user_id, limit)


async def reserve(
    inventory: ServiceClient, identity: Identity, order_id: str, user_id: str, items: Sequence[LineItem]
) -> ReservationIn:
    """Reserves every item or none. A `ReservationRefused` means nothing was taken; any other error
    leaves the outcome unknown, and the caller must release whatever the order may hold."""
    response = await inventory.send(
        "POST",
        "/reservations",
        identity=identity,
        headers=request_id_headers(),
        json={"order_id": order_id, "user_id": user_id, "items": [item.model_dump() for item in items]},
    )
    if response.status_code in (200, 201):
        try:
            reservation = ReservationIn.model_validate_json(response.content)
        except ValidationError:
            raise _unexpected(inventory, response, "a reservation") from None
        asked = sorted((item.product_id, item.quantity) for item in items)
        if reservation.order_id != order_id or sorted((i.product_id, i.quantity) for i in reservation.items) != asked:
            raise _unexpected(inventory, response, "a reservation")
        return reservation
    refusal = REFUSALS.get(response.status_code)
    if refusal is None:
        raise _unexpected(inventory, response, "a reservation")
    problem = _problem(response)
    errors = problem.get("errors")
    raise refusal(
        str(problem.get("detail") or refusal.title),
        error_code=str(problem.get("error_code") or refusal.error_code),
        errors=errors if isinstance(errors, list) else None,
    )


async def confirm(inventory: ServiceClient, identity: Identity, reservation_id: str) -> bool:
    """True once the reservation is confirmed; False when the inventory service says it was released."""
    response = await inventory.send(
        "POST", f"/reservations/{reservation_id}/confirm", identity=identity, headers=request_id_headers()
    )
    if response.status_code == 200:
        return True
    if response.status_code == 409:
        return False
    raise _unexpected(inventory, response, "a confirmation")


async def release_order(inventory: ServiceClient, identity: Identity, order_id: str) -> None:
    """Returns whatever stock the order holds; safe to repeat, and safe before a reserve call lands."""
    response = await inventory.send(
        "POST", f"/orders/{order_id}/reservation/release", identity=identity, headers=request_id_headers()
    )
    if response.status_code != 200:
        raise _unexpected(inventory, response, "a release")
