"""How every process is served (`python -m <process> serve`, `shared/cli.py`), by concern:

- `protocol`: uvicorn's httptools protocol with a bounded request head (431 over the limits);
- `server`: uvicorn's server, letting the app end its long-lived connections first on shutdown;
- `workers`: several workers per process, a gunicorn master and uvicorn workers;
- `multiprocess`: Prometheus multiprocess metrics of those workers, exited ones folded in.

What other modules and `uvicorn --http shared.serving:BoundedHttpToolsProtocol` use is exported here.
"""

from shared.serving.multiprocess import fold_exited_worker, prepare_multiprocess_metrics
from shared.serving.protocol import BoundedHttpToolsProtocol, HeaderLimits, RequestHeadersTooLarge, serving_protocol
from shared.serving.server import BEFORE_SHUTDOWN, DrainingServer, before_shutdown_of
from shared.serving.workers import SHUTDOWN_MARGIN_SECONDS, gunicorn_worker, serve_workers

__all__ = [
    "BEFORE_SHUTDOWN",
    "SHUTDOWN_MARGIN_SECONDS",
    "BoundedHttpToolsProtocol",
    "DrainingServer",
    "HeaderLimits",
    "RequestHeadersTooLarge",
    "before_shutdown_of",
    "fold_exited_worker",
    "gunicorn_worker",
    "prepare_multiprocess_metrics",
    "serve_workers",
    "serving_protocol",
]
