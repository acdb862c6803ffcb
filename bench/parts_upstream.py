"""A stand-in for the users, orders and inventory services behind the dashboard: answers each part's
path with a small JSON document after a fixed delay (milliseconds, the second argument).

    python -m bench.parts_upstream <port> <delay_ms>
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn

USER = {"id": "u-1", "email": "bench@example.com", "role": "admin", "tenant_id": "t-1"}
ORDERS = {"items": [{"id": "o-1", "status": "confirmed", "total_cents": 700}], "next_cursor": None}
RESERVATIONS = {
    "items": [{"id": "r-1", "order_id": "o-1", "items": [{"product_id": "p-1", "quantity": 1}]}],
    "next_cursor": None,
}


def body_for(path: str) -> bytes:
    if path.startswith("/reservations"):
        return json.dumps(RESERVATIONS).encode()
    if path.startswith("/orders"):
        return json.dumps(ORDERS).encode()
    return json.dumps(USER).encode()


def make_app(delay_ms: float):
    delay = delay_ms / 1000

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if delay and not path.startswith("/health"):
            await asyncio.sleep(delay)
        body = body_for(path)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    uvicorn.run(
        make_app(float(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False
    )
