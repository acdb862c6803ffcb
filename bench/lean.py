"""The floor: a lean gateway doing the same hot-path work as Portico, in as few lines as it takes.

    python -m bench.lean PORT

A FastAPI app whose proxy route is a plain Starlette route (no dependency solving), behind one pure
ASGI observability layer. Per request: a request id; the JWT checked against a cache of verified
tokens (HS256 verified on a miss, `exp` honoured); one exact Redis rate-limit call (EVALSHA of a
fixed-window script through redis-py's asyncio client); an OpenTelemetry server span and a client
span with `traceparent` injected, exported in batches over OTLP/HTTP; a Prometheus counter and
histogram; a JSON access line; the call through one pooled aiohttp session; `RateLimit` and
`X-Request-ID` headers on the answer. Settings: `BENCH_DOWNSTREAM_URL`, `BENCH_JWT_SECRET`,
`BENCH_REDIS_URL`, `BENCH_REDIS_PREFIX`, `BENCH_OTLP_ENDPOINT`.
"""

import json
import logging
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI
from jose import JWTError, jwt
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

LIMIT, WINDOW = 1_000_000_000, 60
FIXED_WINDOW = (
    "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n"
)

upstream = os.environ["BENCH_DOWNSTREAM_URL"]
secret = os.environ["BENCH_JWT_SECRET"]
prefix = os.environ["BENCH_REDIS_PREFIX"]
provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "lean"}))
endpoint = os.environ["BENCH_OTLP_ENDPOINT"].rstrip("/")
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
tracer = provider.get_tracer("lean")
requests_total = Counter("http_requests_total", "Requests.", ("method", "route", "status"))
duration = Histogram("http_request_duration_seconds", "Latency.", ("method", "route"))
access = logging.getLogger("access")
verified: dict[str, tuple[float, dict]] = {}
state: dict = {}


class Observability:
    """Request id, server span, metrics and the access line, in one layer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope["request_id"] = request_id
        carrier = {k.decode(): v.decode() for k, v in scope["headers"] if k == b"traceparent"}
        start, status = time.perf_counter(), 500
        with tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as span:

            async def stamp(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                await send(message)

            await self.app(scope, receive, stamp)
            span.set_attribute("http.response.status_code", status)
            elapsed = time.perf_counter() - start
            requests_total.labels(scope["method"], scope["path"], str(status)).inc()
            duration.labels(scope["method"], scope["path"]).observe(elapsed)
            access.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed * 1000, 3),
                        "request_id": request_id,
                    }
                )
            )


def claims_of(token: str) -> dict | None:
    hit = verified.get(token)
    if hit is not None and hit[0] > time.time():
        return hit[1]
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer="portico")
    except JWTError:
        return None
    verified[token] = (claims["exp"], claims)
    return claims


async def proxy(request: Request) -> Response:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    claims = claims_of(token)
    if claims is None:
        return JSONResponse({"detail": "invalid token"}, status_code=401)
    window = int(time.time()) // WINDOW
    used = await state["script"](keys=[f"{prefix}lean:{claims['tid']}:{window}"], args=[WINDOW])
    if used > LIMIT:
        return JSONResponse({"detail": "rate limited"}, status_code=429)
    with tracer.start_as_current_span(f"GET users {request.url.path}", kind=trace.SpanKind.CLIENT) as span:
        headers = {"x-request-id": request.scope["request_id"]}
        propagate.inject(headers)
        async with state["session"].get(request.url.path, headers=headers) as answer:
            body = await answer.read()
        span.set_attribute("http.response.status_code", answer.status)
    return Response(
        body,
        status_code=answer.status,
        media_type=answer.content_type,
        headers={"RateLimit": f'"plan";r={LIMIT - used};t={WINDOW - int(time.time()) % WINDOW}'},
    )


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


@asynccontextmanager
async def lifespan(_):
    redis = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    state["script"] = redis.register_script(FIXED_WINDOW)
    async with aiohttp.ClientSession(base_url=upstream, connector=aiohttp.TCPConnector(limit=100)) as session:
        state["session"] = session
        yield
    await redis.aclose()
    provider.shutdown()


app = FastAPI(lifespan=lifespan, routes=[Route("/health", health), Route("/v1/users/me", proxy)])
app.add_middleware(Observability)

if __name__ == "__main__":
    # Access lines go to stderr, as Portico's do.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
