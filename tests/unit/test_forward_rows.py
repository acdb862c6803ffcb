"""A list row (a `Page` answer) always takes the page's `limit` and `cursor`; a row's access names only
scopes and plans that exist."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from gateway.edge.access import PRINCIPAL, Access
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from shared.pagination import Page


class Thing(BaseModel):
    id: str


def documented_query(row: Forward) -> list[str]:
    routes = ForwardRouter("users", prefix="/v1")
    routes.add(row)
    app = FastAPI()
    app.include_router(routes.docs)
    operation = app.openapi()["paths"][f"/v1{row.path}"]["get"]
    return [parameter["name"] for parameter in operation.get("parameters", ()) if parameter["in"] == "query"]


def test_a_list_without_a_query_of_its_own_takes_the_page_query():
    row = Forward("GET", "/things", PRINCIPAL, "list_things", "Things", answer=Page[Thing])
    assert row.query == PAGE_QUERY
    assert documented_query(row) == ["limit", "cursor"]


def test_a_list_with_filters_keeps_its_own_order():
    query = {"kind": (str | None, None), **PAGE_QUERY}
    row = Forward("GET", "/things", PRINCIPAL, "list_things", "Things", query=query, answer=Page[Thing])
    assert documented_query(row) == ["kind", "limit", "cursor"]


def test_a_list_whose_query_leaves_out_the_cursor_is_refused_when_declared():
    with pytest.raises(ValueError, match="GET /things answers a page: its query must hold limit, cursor"):
        Forward("GET", "/things", PRINCIPAL, "list_things", "Things", query={"kind": (str, "a")}, answer=Page[Thing])


def test_a_row_that_is_not_a_list_takes_no_query():
    row = Forward("GET", "/things/{thing_id}", PRINCIPAL, "get_thing", "A thing", answer=Thing)
    assert row.query == {}


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"scope": "order:read"}, "unknown scope"), ({"plans": ("gold",)}, "unknown plans")]
)
def test_an_access_naming_a_scope_or_plan_that_does_not_exist_is_refused_when_declared(kwargs, message):
    # A typo would otherwise refuse every caller (403), or every plan (402), at run time.
    with pytest.raises(ValueError, match=message):
        Access(**kwargs)
