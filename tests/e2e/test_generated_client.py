"""The gateway's OpenAPI document is enough to drive the API: a client generated from the live
`/openapi.json` by openapi-python-client places an order, lists it and reads a 422 problem, against
every process running for real."""

from __future__ import annotations

import contextlib
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from scripts.devstack import Stack
from tests.orders_support import PASSWORD, unique

# Generating and importing a client of thirty-odd operations takes a while on a loaded machine.
pytestmark = pytest.mark.timeout(300)
PACKAGE = "portico_api_client"


@pytest.fixture(scope="module")
def client_package(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    workdir = tmp_path_factory.mktemp("generated-client")
    spec = httpx.get(f"{stack.url()}/openapi.json", timeout=30)
    assert spec.status_code == 200
    (workdir / "openapi.json").write_text(spec.text)
    # No formatting hooks: the test needs the code, not its style.
    (workdir / "config.yaml").write_text("post_hooks: []\n")
    generator = Path(sys.executable).with_name("openapi-python-client")
    generated = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--meta", "none", "--config", "config.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # The document generates without warnings: nothing in it was skipped.
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def models() -> Any:
    return importlib.import_module(f"{PACKAGE}.models")


def test_a_generated_client_places_lists_and_reads_a_problem(client_package: ModuleType, stack: Stack) -> None:
    with contextlib.ExitStack() as clients:
        generated_client_flow(client_package, stack, clients)


def generated_client_flow(client_package: ModuleType, stack: Stack, clients: contextlib.ExitStack) -> None:
    m = models()
    # Each client holds a connection pool: closed when the test ends.
    anonymous = clients.enter_context(client_package.Client(base_url=stack.url(), raise_on_unexpected_status=True))
    email = f"{unique('client')}@example.com"
    tenant = api("users.create_tenant").sync(
        client=anonymous,
        body=m.TenantCreate(
            name=unique("Client shop"), plan=m.TenantCreatePlan.PRO, admin_email=email, admin_password=PASSWORD
        ),
    )
    assert isinstance(tenant, m.TenantCreated), tenant
    token = api("users.issue_token").sync(client=anonymous, body=m.TokenRequest(username=email, password=PASSWORD))
    assert isinstance(token, m.TokenOut), token
    caller = clients.enter_context(
        client_package.AuthenticatedClient(
            base_url=stack.url(), token=token.access_token, raise_on_unexpected_status=True
        )
    )

    product = api("products.create_product").sync(
        client=caller, body=m.ProductCreate(sku=unique("GEN"), name="Generated mug", price_cents=1250, stock=5)
    )
    assert isinstance(product, m.ProductOut), product
    key = unique("order")
    order_body = m.OrderCreate(items=[m.LineItem(product_id=product.id, quantity=2)])
    placed = api("orders.create_order").sync_detailed(client=caller, body=order_body, idempotency_key=key)
    assert placed.status_code == 201
    order = placed.parsed
    assert isinstance(order, m.OrderOut), order
    assert order.total_cents == 2500
    assert order.status == m.OrderOutStatus.CONFIRMED
    # The same key again: the first order, replayed, as the document's header says.
    again = api("orders.create_order").sync_detailed(client=caller, body=order_body, idempotency_key=key)
    assert again.status_code == 201
    assert again.parsed.id == order.id
    assert again.headers["idempotent-replayed"] == "true"

    listed = api("orders.list_orders").sync_detailed(client=caller, limit=10)
    page = listed.parsed
    assert isinstance(page, m.PageOrderOut), page
    # The documented conditional GET: the same list again with its ETag is 304, without a body.
    unchanged = api("orders.list_orders").sync_detailed(client=caller, limit=10, if_none_match=listed.headers["etag"])
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert [listed.id for listed in page.items] == [order.id]
    assert page.items[0].items[0].product_id == product.id

    invalid = api("orders.create_order").sync_detailed(
        client=caller, body=m.OrderCreate(items=[m.LineItem(product_id=product.id, quantity=0)])
    )
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    problem = invalid.parsed
    assert isinstance(problem, m.Problem), problem
    assert problem.error_code == "VALIDATION_FAILED"
    assert problem.status == 422
    assert [error.field for error in problem.errors] == ["items.0.quantity"]

    missing = api("orders.get_order").sync_detailed(client=caller, order_id="no-such-order")
    assert missing.status_code == 404
    assert missing.parsed.error_code == "ORDER_NOT_FOUND"
    refused = api("orders.list_orders").sync_detailed(client=anonymous)
    assert refused.status_code == 401
    assert refused.parsed.error_code == "AUTHENTICATION_REQUIRED"


def test_the_live_document_is_valid_and_lists_every_route(stack: Stack) -> None:
    from openapi_spec_validator import validate

    document = httpx.get(f"{stack.url()}/openapi.json", timeout=30).json()
    validate(document)
    operations = [op for path in document["paths"].values() for op in path.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)), ids
    assert json.dumps(document).count("HTTPValidationError") == 0
