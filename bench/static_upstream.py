"""An upstream that answers every request with the same small JSON document.

Stands in for a service in benchmarks that measure the gateway itself, not the service behind it.
"""

from __future__ import annotations

import sys

import uvicorn

BODY = (
    b'{"id":"0b7f2c1e-8c2a-4a7e-9d0e-2f4b6c8d0a1e","email":"bench@example.com","role":"admin",'
    b'"tenant_id":"5d1c3b2a-7e6f-4a8b-9c0d-1e2f3a4b5c6d","created_at":"2026-01-01T00:00:00Z"}'
)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    # A request body is read in full before the answer, as a real service would.
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
