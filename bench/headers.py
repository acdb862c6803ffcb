"""What a flood of huge request headers costs a gateway process in memory.

    .venv/bin/python -m bench.headers [--connections 10] [--megabytes 40] [--source DIR]

Starts `python -m gateway serve` (in-process stores; no service is needed for `/health/live`), reads
its resident memory, then opens `--connections` connections at once, each writing a request whose one
header is `--megabytes` MB long, in 64 KiB writes, until the gateway answers or closes the connection.
Meanwhile the gateway's RSS is sampled every 20 ms. The run prints the RSS before, the peak during
and the RSS after, and per connection what it got back and how much it had written by then.

`--source` runs the gateway from another checkout (e.g. an older commit unpacked with
`git archive <commit> | tar -x -C DIR`) with this environment's packages, to compare code.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, server
from bench.gateway import rss_mib
from scripts.devstack import free_port

CHUNK = 64 * 1024


@dataclass
class Outcome:
    status: str  # the status line's code, "closed" or "reset"
    sent: int
    seconds: float


def flood(port: int, megabytes: int, outcome: list[Outcome], start: threading.Event) -> None:
    """One connection writing one huge header until the server answers or hangs up."""
    chunk = b"a" * CHUNK
    total = megabytes * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        start.wait()
        began = time.monotonic()
        sent = 0
        status = "closed"
        try:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            while sent < total:
                sock.sendall(chunk)
                sent += CHUNK
                if select.select([sock], [], [], 0)[0]:
                    break
            else:
                sock.sendall(b"\r\n\r\n")
            answer = sock.recv(64)
            if answer.startswith(b"HTTP/1.1 "):
                status = answer[9:12].decode()
        except (BrokenPipeError, ConnectionResetError):
            status = "reset"
        outcome.append(Outcome(status, sent, time.monotonic() - began))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.headers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--megabytes", type=int, default=40, help="size of each connection's header")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run the gateway from")
    args = parser.parse_args()

    port = free_port()
    env = {"GATEWAY_PORT": str(port), "GATEWAY_ACCESS_LOG": "false", "GATEWAY_REDIS_URL": ""}
    command = [sys.executable, "-m", "gateway", "serve"]
    health = f"http://127.0.0.1:{port}/health/live"
    with server(command, env=env, health_url=health, cwd=args.source.resolve()) as proc:
        time.sleep(1)
        before = rss_mib(proc.pid)
        outcomes: list[Outcome] = []
        start = threading.Event()
        threads = [
            threading.Thread(target=flood, args=(port, args.megabytes, outcomes, start), daemon=True)
            for _ in range(args.connections)
        ]
        for thread in threads:
            thread.start()
        peak = before
        began = time.monotonic()
        start.set()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, rss_mib(proc.pid))
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        time.sleep(1)
        after = rss_mib(proc.pid)

    print(f"gateway from {args.source.resolve()}")
    print(f"{args.connections} connections x {args.megabytes} MB header, done in {elapsed:.1f} s")
    print(f"RSS before {before:.0f} MiB, peak {peak:.0f} MiB (+{peak - before:.0f}), after {after:.0f} MiB")
    for index, outcome in enumerate(sorted(outcomes, key=lambda o: o.sent)):
        sent = outcome.sent / 1024
        print(f"  connection {index}: {outcome.status} after {sent:.0f} KiB sent, {outcome.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
