#!/usr/bin/env python3
"""The image's HEALTHCHECK: exits 0 when the Portico process in this container is ready.

`portico-healthcheck` reads which process runs from PID 1's command line (`python -m <module>
[serve|worker]`, also inside `sh -c "... && exec python -m ..."`) and its port from the variables
that process reads; `portico-healthcheck URL` asks that URL instead.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from shared.contract import PROCESSES

MODULE = re.compile(r"-m\s+(?P<module>[\w.]+)(?:\s+(?P<command>[\w-]+))?")
WORKER_PORT = 8005


def ready_url(cmdline: str, env: Mapping[str, str]) -> str:
    """The /health/ready URL of the process that `cmdline` starts (the last `-m module` in it)."""
    matches = list(MODULE.finditer(cmdline))
    if not matches:
        raise LookupError(f"no `python -m <module>` in {cmdline!r}")
    module, command = matches[-1]["module"], matches[-1]["command"]
    by_module = {process.module: process for process in PROCESSES.values()}
    if module not in by_module:
        raise LookupError(f"{module} is not a Portico process")
    process = by_module[module]
    if process.name == "webhooks" and command == "worker":
        port = env.get("WEBHOOKS_WORKER_PORT", str(WORKER_PORT))
    else:
        port = env.get(f"{process.env_prefix}PORT", str(process.port))
    return f"http://127.0.0.1:{port}/health/ready"


def main(argv: list[str]) -> int:
    try:
        if len(argv) > 1:
            url = argv[1]
        else:
            cmdline = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode()
            url = ready_url(cmdline, os.environ)
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - a loopback URL of our own
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, LookupError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
