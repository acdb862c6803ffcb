"""The API reference pages (`/docs`, Swagger UI; `/redoc`, ReDoc), with every asset served by the
process itself: the pages work without internet, and the browser never loads code from elsewhere.

The assets (Swagger UI's bundle and stylesheet, ReDoc's standalone bundle, a favicon) come from the
`fastapi-offline` package, pinned in the lock file like any other dependency; they are served under
`DOCS_ASSETS_URL`. The pages themselves are FastAPI's, pointed at those files.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
DOCS_ASSETS_URL = "/docs/assets"
# The pages that run scripts (inline ones included); everything they load comes from this origin.
DOCS_PAGES = frozenset({DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL})
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)
# Swagger UI's defaults would ask an online validator for a badge.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None, "persistAuthorization": True}


def assets_directory() -> str:
    return str(files("fastapi_offline") / "static")


def add_offline_docs(app: FastAPI, openapi_url: str) -> None:
    """Adds `/docs`, its OAuth2 redirect page, `/redoc` and their assets to `app`."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS_URL}/{name}"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT_URL, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(REDOC_URL, redoc, methods=["GET"], include_in_schema=False)
