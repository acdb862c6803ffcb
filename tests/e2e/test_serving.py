"""Serving a process with several workers (`<PREFIX>WORKERS`): a gunicorn master with uvicorn workers.
Real processes: a gateway of the test's own, in front of a users service the test plays."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from scripts.devstack import free_port
from tests.conftest import ROOT

LIVE = re.compile(r'^http_requests_total\{method="GET",route="/health/live",status="200"\} (\S+)$', re.MULTILINE)


class SlowUsers:
    """A users service whose token route answers only when the test lets it."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        slow = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                slow.arrived.set()
                slow.release.wait(60)
                body = json.dumps({"access_token": "t", "token_type": "bearer", "expires_in": 60}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    metrics_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> set[int]:
        """The workers whose sample files are in the directory (exited ones are folded into the archive)."""
        return {int(m[1]) for p in self.metrics_dir.glob("*.db") if (m := re.search(r"_(\d+)\.db$", p.name))}


@pytest.fixture
def users() -> Iterator[SlowUsers]:
    stub = SlowUsers()
    yield stub
    stub.close()


def start_gateway(tmp_path: Path, users_url: str, *, own_metrics_dir: bool = True, **settings: str) -> Gateway:
    """`own_metrics_dir` False: the gateway makes its own temporary directory, as by default."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_USERS_URL": users_url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "OTEL_SDK_DISABLED": "true",
        **{f"GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    env.pop("GATEWAY_REDIS_URL", None)
    if not own_metrics_dir:
        del env["PROMETHEUS_MULTIPROC_DIR"]
    with (tmp_path / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    gateway = Gateway(process, port, metrics_dir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "gateway.log").read_text()
        try:
            if httpx.get(f"{gateway.url}/health/live", timeout=2).status_code == 200:
                return gateway
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the gateway did not start: " + (tmp_path / "gateway.log").read_text())


def stop(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(30)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()


def live_count(client: httpx.Client, url: str) -> float:
    response = client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    return sum(float(value) for value in LIVE.findall(response.text))


@pytest.mark.parametrize("own_metrics_dir", [True, False], ids=["PROMETHEUS_MULTIPROC_DIR", "temporary"])
def test_counters_are_summed_over_workers_and_survive_recycling(tmp_path, users, own_metrics_dir):
    # Each worker is replaced after 7 requests, so the run goes through several generations.
    gateway = start_gateway(
        tmp_path, users.url, own_metrics_dir=own_metrics_dir, workers="2", max_requests="7", max_requests_jitter="0"
    )
    try:
        # A new connection per request, so both workers (and their successors) take requests.
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=60) as client:
            # The probes that waited for the start are counted too.
            sent = live_count(client, gateway.url)
            seen = [sent]
            for _ in range(8):
                for _ in range(6):
                    assert client.get(f"{gateway.url}/health/live").status_code == 200
                    sent += 1
                # A worker counts a request just after its answer: wait for the last one.
                deadline = time.monotonic() + 30
                count = live_count(client, gateway.url)
                seen.append(count)
                while count < sent and time.monotonic() < deadline:
                    time.sleep(0.1)
                    count = live_count(client, gateway.url)
                    seen.append(count)
                assert count == sent
            # Never backwards, across every scrape, whichever worker answered it.
            assert seen == sorted(seen), seen
        assert gateway.process.poll() is None
        if not own_metrics_dir:
            return
        # Workers were replaced: what the exited ones counted is in the archive (and in the sums
        # above), and their own files are gone, so the directory does not grow with every worker.
        # The master folds a worker's files when it reaps it, which may come after the last answer.
        archives = [gateway.metrics_dir / "counter_archive.db", gateway.metrics_dir / "histogram_archive.db"]

        def folded() -> bool:
            return all(archive.exists() for archive in archives) and len(gateway.worker_pids()) <= 2

        deadline = time.monotonic() + 30
        while not folded() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(archive.exists() for archive in archives), sorted(p.name for p in gateway.metrics_dir.iterdir())
        assert len(gateway.worker_pids()) <= 2, sorted(p.name for p in gateway.metrics_dir.iterdir())
    finally:
        stop(gateway)


def test_sigterm_finishes_the_request_in_flight_and_stops_listening(tmp_path, users):
    gateway = start_gateway(tmp_path, users.url, workers="2", shutdown_timeout_seconds="20")
    answer: dict[str, httpx.Response] = {}

    def token() -> None:
        form = {"username": "a@example.com", "password": "correct-horse-9"}
        answer["response"] = httpx.post(f"{gateway.url}/v1/auth/token", data=form, timeout=60)

    request = threading.Thread(target=token)
    request.start()
    try:
        assert users.arrived.wait(30), "the request never reached the users service"
        gateway.process.send_signal(signal.SIGTERM)
        # New connections are refused while the request in flight is still running.
        deadline = time.monotonic() + 15
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                httpx.get(f"{gateway.url}/health/live", timeout=1)
                time.sleep(0.1)
            except httpx.TransportError:
                refused = True
        assert refused, "the gateway kept accepting connections after SIGTERM"
        assert gateway.process.poll() is None
        users.release.set()
        request.join(30)
        response = answer["response"]
        assert response.status_code == 200, response.text
        assert response.json()["access_token"] == "t"
        assert gateway.process.wait(30) == 0
    finally:
        users.release.set()
        stop(gateway)
        request.join(5)


def _read_answer(conn: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer with a Content-Length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length, head
    while len(body) < int(length[1]):
        chunk = conn.recv(65536)
        assert chunk, "the connection closed in the middle of an answer"
        body += chunk
    return head, body


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_keep_alive_client_that_sends_as_the_server_stops_is_answered_not_reset(tmp_path, users, workers):
    """A keep-alive connection idle between two requests when the server begins to stop (SIGTERM, or
    a worker replaced after its `max_requests`): the client's next request is answered, with
    `Connection: close`, where closing the idle connection at once would reset it."""
    # One process has no metrics directory to share.
    gateway = start_gateway(tmp_path, users.url, own_metrics_dir=workers != "1", workers=workers)
    request = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as conn:
            conn.sendall(request)
            head, _ = _read_answer(conn)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in head.lower()

            gateway.process.send_signal(signal.SIGTERM)
            # Listening stops in the same step as every open connection is told to shut down.
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "the gateway kept accepting connections after SIGTERM"
                time.sleep(0.05)

            conn.sendall(request)
            head, body = _read_answer(conn)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"connection: close" in head.lower()
            assert json.loads(body) == {"status": "ok"}
            assert conn.recv(1) == b"", "the connection stays open after its last answer"
        # A clean stop: gunicorn's master exits 0; one uvicorn process re-raises the SIGTERM it
        # handled once it has shut down.
        assert gateway.process.wait(30) == (0 if workers != "1" else -signal.SIGTERM)
    finally:
        stop(gateway)
