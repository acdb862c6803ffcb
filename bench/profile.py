"""Where a gateway request's CPU time goes: the full default pipeline in this process under uvicorn,
loaded by wrk, profiled with cProfile on the event loop thread's CPU clock.

The clock is the thread's CPU time, not the wall clock: on a machine where other work competes for
the cores, a wall-clock profile charges whatever function was running when the process was preempted
(typically a socket write). Coroutines are counted once per resumption, so `ncalls` of an `async def`
is not the number of requests; `cumtime` divided by the requests is.

    python -m bench.profile --seconds 10            # the table sorted by cumulative, then own time
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import os
import pstats
import sys
import threading
import time

import uvicorn

from bench.common import bearer, redis_prefix, server, wrk
from scripts.devstack import free_port

SECRET = "profile-jwt-secret-" + "x" * 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of the profiled wrk run")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--lines", type=int, default=40, help="lines of each table")
    parser.add_argument("--save", help="also write the raw profile here (for pstats or snakeviz)")
    args = parser.parse_args()

    with redis_prefix(args.redis_url) as prefix, contextlib.ExitStack() as stack:
        down = free_port()
        stack.enter_context(
            server(
                [sys.executable, "-m", "bench.static_upstream", str(down)],
                env={},
                health_url=f"http://127.0.0.1:{down}/",
            )
        )
        port = free_port()
        os.environ.update(
            {
                "GATEWAY_PORT": str(port),
                "GATEWAY_JWT_SECRET": SECRET,
                "GATEWAY_REDIS_URL": args.redis_url,
                "GATEWAY_REDIS_KEY_PREFIX": prefix,
                "GATEWAY_RATE_LIMIT_ENTERPRISE": "1000000000/60s",
                # Spans are recorded and exported as in production, to an address that refuses them.
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                **{f"GATEWAY_{name}_URL": f"http://127.0.0.1:{down}" for name in ("USERS", "ORDERS", "INVENTORY")},
                "GATEWAY_WEBHOOKS_URL": f"http://127.0.0.1:{down}",
            }
        )
        profile(args, port)


def profile(args: argparse.Namespace, port: int) -> None:
    # Imported once the environment is set.
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from shared.logging import configure_logging
    from shared.serving import serving_protocol

    settings = GatewaySettings()
    configure_logging("gateway", level="INFO", json_lines=True)
    # The access log is written (and formatted) as in production, to nowhere.
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=serving_protocol(settings), access_log=False, log_config=None
    )
    uvicorn_server = uvicorn.Server(config)
    profiler = cProfile.Profile(time.thread_time)
    url = f"http://127.0.0.1:{port}/v1/users/me"
    headers = {"Authorization": f"Bearer {bearer(secret=SECRET)}"}
    outcome: dict[str, float] = {}
    loop: asyncio.AbstractEventLoop | None = None

    def load() -> None:
        while not uvicorn_server.started:
            time.sleep(0.1)
        assert loop is not None
        wrk(url, headers=headers, seconds=2, connections=args.connections)  # warm-up
        loop.call_soon_threadsafe(profiler.enable)
        result = wrk(url, headers=headers, seconds=args.seconds, connections=args.connections)
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (profiler.disable(), done.set()))
        done.wait()
        outcome["requests"] = result.requests
        outcome["rate"] = result.requests_per_second
        uvicorn_server.should_exit = True

    async def serve() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        await uvicorn_server.serve()

    threading.Thread(target=load, daemon=True).start()
    asyncio.run(serve())

    if args.save:
        profiler.dump_stats(args.save)
    stats = pstats.Stats(profiler, stream=(out := io.StringIO()))
    total = stats.total_tt  # type: ignore[attr-defined]  # set by Stats, missing from typeshed's stub
    requests = outcome["requests"]
    print(
        f"{requests:.0f} requests at {outcome['rate']:.0f} req/s; event loop CPU time "
        f"{total / requests * 1e6:.0f} µs per request (profiled, so slower than unprofiled)\n"
    )
    stats.sort_stats("cumulative").print_stats(args.lines)
    stats.sort_stats("tottime").print_stats(args.lines)
    print(out.getvalue())


if __name__ == "__main__":
    main()
