"""What documents built to keep GraphQL busy cost the gateway: CPU per document through the gateway's
schema (parse, bounds, validation; no service is called), beside what GraphQL's validation alone
would cost them without the bounds.

    .venv/bin/python -m bench.graphql_documents [--runs 5]

Each line: the document's size in tokens, the gateway's answer (the `extensions.code` of its first
error, or `ok`), the median CPU time of that answer, and of graphql-core's validation of the same
document with none of the gateway's bounds (its overlapping-fields rule on its default budget of
500,000 comparisons). CPU time, so the figures hold on a shared machine; they still vary with it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Callable

from graphql import get_introspection_query, parse, validate
from graphql.language import Lexer, Source, TokenKind

from gateway.graphql.router import create_schema
from gateway.settings import GatewaySettings

SECRET = "bench-secret-" + "x" * 40


def documents() -> dict[str, str]:
    fragments = " ".join(f"fragment F{i} on Query {{ f{i} }}" for i in range(200))
    same = " ".join(f"fragment G{i} on Query {{ me {{ id }} }}" for i in range(150))
    return {
        "me { id } x 495": "{ " + " ".join(["me { id }"] * 495) + " }",
        "__typename x 1990": "{ " + " ".join(["__typename"] * 1990) + " }",
        "__typename x 10": "{ " + " ".join(["__typename"] * 10) + " }",
        "150 fragments, one field": "{ " + " ".join(f"...G{i}" for i in range(150)) + " } " + same,
        "200 fragments, a field each": "{ " + " ".join(f"...F{i}" for i in range(200)) + " } " + fragments,
        "unused fragment, me x 400": "{ me { id } } fragment U on Query { " + " ".join(["me { id }"] * 400) + " }",
        "GraphiQL's introspection": get_introspection_query(),
    }


def tokens(document: str) -> int:
    lexer, count = Lexer(Source(document)), 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


def cpu(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the refusals' log lines
    settings = GatewaySettings(environment="test", internal_token_secret=SECRET, jwt_secret=SECRET)
    schema = create_schema(settings)
    print(f"{'document':30} {'tokens':>6}  {'gateway answers':26} {'gateway CPU':>11}  {'unbounded validation':>20}")
    for name, document in documents().items():
        result = asyncio.run(schema.execute(document))
        answer = str(result.errors[0].extensions.get("code")) if result.errors else "ok"
        gateway = cpu(lambda document=document: asyncio.run(schema.execute(document)), args.runs)
        parsed = parse(document, max_tokens=100_000)
        unbounded = cpu(lambda parsed=parsed: validate(schema._schema, parsed), args.runs)
        print(f"{name:30} {tokens(document):>6}  {answer:26} {gateway * 1000:>8.1f} ms  {unbounded * 1000:>17.1f} ms")


if __name__ == "__main__":
    main()
