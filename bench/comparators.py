"""The gateways Portico is measured against, each as a FastAPI app the way it is commonly written.

    python -m bench.comparators {textbook,assembled,aiohttp} PORT

Settings come from the environment: `BENCH_DOWNSTREAM_URL` (every one), and for `assembled` also
`BENCH_JWT_SECRET`, `BENCH_REDIS_URL`, `BENCH_REDIS_PREFIX` and `BENCH_OTLP_ENDPOINT`. Each runs as
one uvicorn worker with uvicorn's defaults (uvloop and httptools where installed) and without
uvicorn's access log, the fastest way each is commonly served.

- textbook: one pooled `httpx.AsyncClient` (default transport; limits of 100 connections and 20
  keep-alive, httpx's defaults, spelt out), forwarding the request's headers and answering
  `response.json()`.
- assembled: what a team builds from popular libraries: a python-jose JWT dependency, slowapi
  rate limiting on Redis, prometheus-fastapi-instrumentator, OpenTelemetry's FastAPI and httpx
  instrumentation exporting over OTLP/HTTP, and the textbook's pooled client.
- aiohttp: a bare route proxying through one pooled `aiohttp.ClientSession`.
"""

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import aiohttp
import httpx
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jose import JWTError, jwt

# High enough that no benchmark is refused: the rows measure the cost of counting, not of refusing.
UNREACHABLE_QUOTA = "1000000000/minute"


def forwarded(request: Request) -> dict[str, str]:
    """The request's headers, as such a gateway forwards them (the upstream's Host is its own)."""
    return {name: value for name, value in request.headers.items() if name != "host"}


def pooled_httpx(upstream: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=upstream, limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))


def textbook(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with pooled_httpx(upstream) as client:
            yield {"client": client}

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def proxy(path: str, request: Request) -> Any:
        client: httpx.AsyncClient = request.state.client
        response = await client.request(
            request.method,
            f"/{path}",
            params=request.query_params,
            headers=forwarded(request),
            content=await request.body(),
        )
        return response.json()

    return app


def assembled(upstream: str) -> FastAPI:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prometheus_fastapi_instrumentator import Instrumentator
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    secret = os.environ["BENCH_JWT_SECRET"]
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "assembled"}))
    endpoint = os.environ["BENCH_OTLP_ENDPOINT"].rstrip("/")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)

    def tenant(request: Request) -> str:
        return getattr(request.state, "tenant", None) or get_remote_address(request)

    # Its keys go under the run's prefix, so that the run removes them at the end.
    limiter = Limiter(
        key_func=tenant,
        storage_uri=os.environ["BENCH_REDIS_URL"],
        storage_options={"key_prefix": os.environ["BENCH_REDIS_PREFIX"]},
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with pooled_httpx(upstream) as client:
            yield {"client": client}
        provider.shutdown()

    app = FastAPI(lifespan=lifespan)
    app.state.limiter = limiter
    app.add_exception_handler(
        RateLimitExceeded,
        _rate_limit_exceeded_handler,  # type: ignore[arg-type]  # typed for RateLimitExceeded, not any Exception
    )
    Instrumentator().instrument(app).expose(app)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

    async def current_user(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials, Depends(HTTPBearer())]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(credentials.credentials, secret, algorithms=["HS256"], issuer="portico")
        except JWTError as exc:
            raise HTTPException(status_code=401, detail="invalid token") from exc
        request.state.tenant = claims["tid"]
        return claims

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/users/me")
    @limiter.limit(UNREACHABLE_QUOTA)
    async def me(request: Request, user: Annotated[dict[str, Any], Depends(current_user)]) -> Any:
        client: httpx.AsyncClient = request.state.client
        response = await client.get("/v1/users/me", headers=forwarded(request))
        return response.json()

    return app


def bare_aiohttp(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with aiohttp.ClientSession(base_url=upstream, connector=aiohttp.TCPConnector(limit=100)) as session:
            yield {"session": session}

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/{path:path}")
    async def proxy(path: str, request: Request) -> Response:
        session: aiohttp.ClientSession = request.state.session
        async with session.get(f"/{path}") as answer:
            body = await answer.read()
        return Response(body, status_code=answer.status, media_type=answer.content_type)

    return app


APPS = {"textbook": textbook, "assembled": assembled, "aiohttp": bare_aiohttp}

if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    app = APPS[name](os.environ["BENCH_DOWNSTREAM_URL"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
