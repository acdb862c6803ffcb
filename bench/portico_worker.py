"""The gateway's gunicorn worker class as `python -m gateway serve` builds it with `GATEWAY_WORKERS`
(`shared/serving/workers.py`: the bounded protocol with the gateway's limits, its graceful shutdown), for
`gunicorn -k bench.portico_worker.UvicornWorker ...`."""

from __future__ import annotations

from gateway.settings import GatewaySettings
from shared.serving import gunicorn_worker

UvicornWorker = gunicorn_worker(GatewaySettings())
