"""What the answer and the log say of each kind of GraphQL error: the caller's mistakes are coded and
logged at INFO without a traceback; a resolver that fails is an ERROR with its traceback and answers
no internals; a field whose call the request's deadline refused answers DEADLINE_EXCEEDED, as REST
does, without a traceback; where introspection is off, no message suggests a name of the schema."""

from __future__ import annotations

import logging

import pytest
from starlette.types import Message

from gateway.app import create_app
from tests.aggregate_support import ScriptedService, answer_json
from tests.conftest import running_app
from tests.edge_support import bearer, gateway_settings, http_scope, in_process_gateway

GRAPHQL_LOGGER = "portico.gateway.graphql"

# Each of these asks for a name the schema nearly has; GraphQL would suggest it.
MISTAKES = [
    ({"query": "{ mee { id } }"}, "Did you mean 'me'?"),
    ({"query": "{ orders(limt: 5) { nextCursor } }"}, "Did you mean 'limit'?"),
    ({"query": 'mutation { createOrder(items: [{prodId: "p-1", quantity: 1}]) { id } }'}, "Did you mean 'productId'?"),
    ({"query": "query($i: [OrderItemInpt!]!) { me { id } }", "variables": {"i": []}}, "Did you mean 'OrderItemInput'"),
    (
        {
            "query": "mutation($i: [OrderItemInput!]!) { createOrder(items: $i) { id } }",
            "variables": {"i": [{"prodId": "p-1", "quantity": 1}]},
        },
        "Did you mean 'productId'?",
    ),
]


@pytest.mark.parametrize(("environment", "suggested"), [("test", True), ("production", False)])
async def test_names_are_suggested_only_where_introspection_is_on(environment, suggested):
    async with in_process_gateway(gateway_settings(None, environment=environment)) as gateway:
        for body, suggestion in MISTAKES:
            response = await gateway.post("/graphql", json=body, headers=bearer())
            assert response.status_code == 200, response.text
            errors = response.json()["errors"]
            assert {e["extensions"]["code"] for e in errors} == {"GRAPHQL_VALIDATION_FAILED"}, errors
            messages = " ".join(e["message"] for e in errors)
            assert (suggestion in messages) is suggested, messages
            assert ("Did you mean" in messages) is suggested, messages


async def test_mistakes_are_logged_at_info_and_a_failing_resolver_at_error(caplog):
    # A users service that answers a user without most of its fields: the resolver fails.
    odd = ScriptedService(lambda method, path: answer_json(200, {"id": "u-1"}))
    caplog.set_level(logging.INFO, logger=GRAPHQL_LOGGER)
    async with odd.running(), in_process_gateway(gateway_settings(None, users_url=odd.url)) as gateway:
        typo = await gateway.post("/graphql", json={"query": "{ mee { id } }"}, headers=bearer())
        assert typo.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        syntax = await gateway.post("/graphql", json={"query": "{ me { id }"}, headers=bearer())
        assert syntax.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        mistakes = [r for r in caplog.records if r.name.startswith(("strawberry", GRAPHQL_LOGGER))]
        assert [(r.name, r.levelno, r.exc_info) for r in mistakes] == [(GRAPHQL_LOGGER, logging.INFO, None)] * 2
        caplog.clear()

        failed = await gateway.post("/graphql", json={"query": "{ me { id email } }"}, headers=bearer())
    assert failed.status_code == 200
    assert failed.json() == {
        "data": None,
        "errors": [
            {
                "message": "An internal error occurred.",
                "locations": [{"line": 1, "column": 3}],
                "path": ["me"],
                "extensions": {"code": "INTERNAL_ERROR"},
            }
        ],
    }
    [record] = [r for r in caplog.records if r.name.startswith(("strawberry", GRAPHQL_LOGGER))]
    assert record.name == GRAPHQL_LOGGER
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


async def test_fields_past_the_requests_deadline_answer_its_code_without_a_traceback(caplog):
    # An orders service that never answers: the first mutation waits out the request's time budget,
    # and the ones after it (mutations run one after the other) start past the request's deadline.
    hung = ScriptedService(lambda method, path: None)
    cancels = " ".join(f'c{i}: cancelOrder(id: "o-{i}") {{ id }}' for i in range(3))
    caplog.set_level(logging.INFO)
    async with (
        hung.running(),
        in_process_gateway(gateway_settings(None, orders_url=hung.url, http_timeout_seconds=1.0)) as gateway,
    ):
        response = await gateway.post("/graphql", json={"query": f"mutation {{ {cancels} }}"}, headers=bearer())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["data"] == {"c0": None, "c1": None, "c2": None}
    errors = {error["path"][0]: error for error in answer["errors"]}
    assert errors["c0"]["extensions"] == {"code": "DOWNSTREAM_TIMEOUT", "status": 504}
    for late in ("c1", "c2"):
        # As REST answers it: 504 DEADLINE_EXCEEDED, and the service is not called.
        assert errors[late]["extensions"] == {"code": "DEADLINE_EXCEEDED", "status": 504}
        assert errors[late]["message"] == "The request's deadline passed before the call to the orders service."
    assert hung.requests == [("POST", "/orders/o-0/cancel")]
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR] == []
    fields = [r for r in caplog.records if r.name == GRAPHQL_LOGGER]
    assert [(r.levelno, r.exc_info) for r in fields] == [(logging.WARNING, None)] * 3


async def test_a_client_that_leaves_while_its_document_arrives_is_no_error(stack, caplog):
    """The connection closes with half a document sent: the client's own outcome (`client_closed`,
    logged at INFO), never an unhandled error with its traceback."""
    app = create_app(gateway_settings(stack))
    async with running_app(app) as (gateway, state):
        request = gateway.build_request("POST", "/graphql", json={"query": "{ me { id } }"}, headers=bearer())
        incoming: list[Message] = [
            {"type": "http.disconnect"},
            {"type": "http.request", "body": request.content[:10], "more_body": True},
        ]
        answer: list[Message] = []

        async def receive() -> Message:
            return incoming.pop()

        async def send(message: Message) -> None:
            answer.append(message)

        with caplog.at_level(logging.INFO):
            await app(http_scope(request, state), receive, send)
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
        scraped = (await gateway.get("/metrics")).text
        assert 'http_requests_total{method="POST",route="/graphql",status="client_closed"} 1.0' in scraped
