"""GraphiQL at `GET /graphql`, only where the API reference is on (never in production), with every
asset served by the gateway itself from `static/`: nothing is loaded from a CDN.

Every request needs credentials, which the browser does not send on its own: the page opens with a
placeholder `Authorization` header in the Headers tab and a query whose comment says where a token
(or an API key) comes from, so a first run says how to get past its 401."""

from __future__ import annotations

import gzip
import json
from functools import cache
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import HTMLResponse, Response

from gateway.openapi import operation_docs
from shared.contract import CACHE_CONTROL
from shared.errors import NotFound

router = APIRouter(tags=["graphql"])
STATIC = files("gateway.graphql") / "static"
# What the page may load: its own scripts and styles; GraphiQL's inline styles and data: fonts.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; font-src 'self' data:; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Asset -> (media type, stored gzip-compressed).
ASSETS = {
    "graphiql.min.js": ("text/javascript", True),
    "graphiql.min.css": ("text/css", True),
    "react.production.min.js": ("text/javascript", True),
    "react-dom.production.min.js": ("text/javascript", True),
    "graphiql-init.js": ("text/javascript", False),
}
# The files never change while the process runs.
ASSET_CACHE_CONTROL = "public, max-age=86400"
# What the editors open with (GraphiQL's defaultHeaders and defaultQuery).
DEFAULT_HEADERS = {"Authorization": "Bearer <token>"}
DEFAULT_QUERY = """\
# Portico's GraphQL API: every request needs credentials, set in the Headers tab below.
#
# A bearer token: POST /v1/auth/token with a form (username=<your email>, password=<your password>):
#   curl -d username=you@example.com -d password=... https://<this host>/v1/auth/token
# and its access_token in place of <token>: {"Authorization": "Bearer eyJ..."}
# Or an API key (POST /v1/api-keys answers it once): {"X-API-Key": "<key>"}
#
# Then run this query, and reload the schema (the circling arrows) for the docs and completion.

query Me {
  me { id email role tenantId }
}
"""
PLACEHOLDER = b"__GRAPHIQL_DEFAULTS__"


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@cache
def _page() -> bytes:
    defaults = json.dumps({"headers": DEFAULT_HEADERS, "query": DEFAULT_QUERY})
    # Data in a <script> element: "<" escaped, so nothing in it can close the element.
    return _read("graphiql.html").replace(PLACEHOLDER, defaults.replace("<", "\\u003c").encode())


# In the reference, so that `/graphql`'s methods there are those it serves (its `Allow` names GET too).
GRAPHIQL_DOCS = operation_docs("GET", status_code=200, credentials="none", conditional=False)
GRAPHIQL_DOCS["responses"][200].update(
    description="GraphiQL's page.",
    content={
        "text/html": {
            "schema": {"type": "string"},
            "example": '<!doctype html><html lang="en"><head><title>Portico GraphQL</title>...',
        }
    },
)


@router.get(
    "/graphql",
    summary="GraphiQL, an in-browser IDE for the GraphQL API",
    description=(
        "Outside production only: GraphiQL, with every asset served by the gateway. The page needs no "
        "credentials; the queries it sends (`POST /graphql`) do: its Headers tab opens with an "
        "`Authorization: Bearer <token>` placeholder and its query with a comment saying where a token "
        "comes from."
    ),
    response_class=HTMLResponse,
    **GRAPHIQL_DOCS,
)
async def graphiql() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Content-Security-Policy": CSP, CACHE_CONTROL: "no-cache"})


@router.get("/graphql/static/{name}", include_in_schema=False)
async def graphiql_asset(name: str, accept_encoding: Annotated[str, Header()] = "") -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound("No such GraphiQL asset.")
    media_type, compressed = asset
    if not compressed:
        return Response(_read(name), media_type=media_type, headers={CACHE_CONTROL: ASSET_CACHE_CONTROL})
    body = _read(name + ".gz")
    headers = {CACHE_CONTROL: ASSET_CACHE_CONTROL, "Vary": "Accept-Encoding"}
    if "gzip" in accept_encoding.lower():
        return Response(body, media_type=media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(gzip.decompress(body), media_type=media_type, headers=headers)
