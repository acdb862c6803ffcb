"""A small webhook receiver for demos and tests: `python -m services.webhooks.receiver --port 9000`.

It verifies every request with the `standardwebhooks` package (the specification's own library, as
any receiver would) and prints one line per request with what it verified, then answers 204; a
request that fails verification is answered 400 and printed as refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

SECRET_ENV = "WEBHOOK_SECRET"
MAX_BODY_BYTES = 1024 * 1024


def create_receiver(secret: str, *, out: Any = None) -> Starlette:
    webhook = Webhook(secret)

    def say(line: str) -> None:
        print(line, file=out or sys.stdout, flush=True)

    async def receive(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return PlainTextResponse("too large\n", status_code=413)
        body = await request.body()
        webhook_id = request.headers.get("webhook-id", "-")
        try:
            payload = webhook.verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError) as exc:
            # ValueError: a signature header or body that is not even well formed.
            say(f"refused webhook-id={webhook_id}: {exc}")
            return PlainTextResponse(f"signature refused: {exc}\n", status_code=400)
        data = payload.get("data") if isinstance(payload, dict) else None
        order = data.get("id") if isinstance(data, dict) else None
        kind = payload.get("type") if isinstance(payload, dict) else None
        say(f"verified webhook-id={webhook_id} type={kind} order={order}")
        return Response(status_code=204)

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ready: POST webhooks to any path\n")

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"]), Route("/{path:path}", ready)])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.webhooks.receiver",
        description="Receives webhooks, verifies their signatures and prints what it verified.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        help=f"the endpoint's whsec_ secret (default: ${SECRET_ENV})",
    )
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error(f"give the endpoint's secret with --secret or {SECRET_ENV}")
    try:
        app = create_receiver(args.secret)
    except Exception as exc:  # the library's own errors for a secret that is not one
        parser.error(f"not a webhook secret: {exc}")
    print(f"receiving webhooks on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
