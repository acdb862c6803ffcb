"""gunicorn's uvicorn worker serving with Portico's bounded request heads (`shared/serving.py`), as
`python -m gateway serve` does: `gunicorn -k bench.portico_worker.UvicornWorker ...`."""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker as BaseWorker


class UvicornWorker(BaseWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **BaseWorker.CONFIG_KWARGS,
        "http": "shared.serving:BoundedHttpToolsProtocol",
    }
