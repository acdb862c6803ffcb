"""`make run`: migrate, start all five processes on embedded defaults, print how to use them.

The URL settings in the environment are honoured: a `GATEWAY_<SERVICE>_URL` listing several local URLs
(`http://127.0.0.1:8003,http://127.0.0.1:8013`) starts an instance of the service on each, and every
process that calls the service is told the same list unless its own setting is in the environment too."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from scripts.devstack import DEFAULT_PORTS, WORKER_PORTS, Stack
from shared.contract import PROCESSES, SERVICES, WEBHOOKS_WORKER
from shared.settings import service_address

ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGH = """
Portico is up.

  gateway    {gw}   (docs: {gw}/docs and {gw}/redoc, metrics: {gw}/metrics)
  users      {users}
  orders     {orders}
  inventory  {inventory}
  webhooks   {webhooks}
  worker     {worker}   (webhook delivery: /metrics, /health/ready)
  logs       {logs}

Try it (copy and paste):

  GW={gw}
  ADMIN=admin-$(python3 -c 'import secrets; print(secrets.token_hex(4))')@acme.example.com
  curl -s -X POST $GW/v1/tenants -H 'content-type: application/json' \\
    -d '{{"name": "Acme", "plan": "pro", "admin_email": "'$ADMIN'", "admin_password": "correct-horse-9"}}'
  TOKEN=$(curl -s -X POST $GW/v1/auth/token -d "username=$ADMIN&password=correct-horse-9" \\
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s $GW/v1/users/me -H "Authorization: Bearer $TOKEN"

The README's walkthrough goes on from here: products, orders, idempotent replays, webhooks, API
keys and rate limits. Loopback webhook URLs are allowed for this demo (WEBHOOKS_ALLOW_PRIVATE_URLS),
and `.venv/bin/python -m services.webhooks.receiver --port 9000 --secret whsec_...` is a receiver that
verifies and prints what the worker delivers.

Ctrl-C stops everything.
"""


def _local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def instances_from(environ: Mapping[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    """Ports and hosts of the processes to start: the defaults, and one instance per local URL of a
    service in the gateway's URL settings (`GATEWAY_INVENTORY_URL`). Refuses a setting that does not
    parse, naming it."""
    ports = {**DEFAULT_PORTS, **WORKER_PORTS}
    hosts: dict[str, str] = {}
    for service in SERVICES:
        variable = f"{PROCESSES['gateway'].env_prefix}{service.upper()}_URL"
        if variable not in environ:
            continue
        try:
            address = service_address(environ[variable])
        except ValueError as exc:
            raise SystemExit(f"{variable}: {exc}") from None
        local = [endpoint for endpoint in address.endpoints if _local(endpoint.host)]
        for index, endpoint in enumerate(local):
            name = service if index == 0 else f"{service}#{index + 1}"
            ports[name] = endpoint.port
            if endpoint.host not in ("127.0.0.1", "localhost"):
                hosts[name] = endpoint.host
    return ports, hosts


def main() -> int:
    # A local demo: webhook endpoints on this machine (a receiver on localhost) are allowed.
    env = {"PYTHONUNBUFFERED": "1", "WEBHOOKS_ALLOW_PRIVATE_URLS": "true"}
    ports, hosts = instances_from(os.environ)
    stack = Stack(ports=ports, hosts=hosts, keep_env_urls=True, log_dir=ROOT / "var" / "log", cwd=ROOT, env=env)
    print("migrating the embedded SQLite databases in ./var ...", flush=True)
    stack.migrate()
    print("starting gateway, users, orders, inventory, webhooks and the webhook delivery worker ...", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Handled explicitly, not through KeyboardInterrupt: a shell that starts this in the background
    # leaves SIGINT ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
        print(
            WALKTHROUGH.format(
                gw=stack.url(),
                logs=stack.log_dir,
                worker=stack.url(WEBHOOKS_WORKER),
                **{n: stack.service_url(n) for n in stack.ports if n.isidentifier()},
            ),
            flush=True,
        )
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; see {stack.log_dir}/{name}.log", flush=True)
                    return 1
            time.sleep(0.5)
    finally:
        print("\nstopping ...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
