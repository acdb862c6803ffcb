"""Helpers for benchmarks: a static downstream, processes, wrk."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
from jose import jwt

ROOT = Path(__file__).resolve().parent.parent
DEV_JWT_SECRET = "dev-jwt-secret-change-me"


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    return path


def bearer(scopes: str = "users:read users:write orders:read orders:write", plan: str = "enterprise") -> str:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "scope": scopes,
        "plan": plan,
        "role": "admin",
        "iss": "portico",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"})


@contextmanager
def process(module: str, *args: str, env: Mapping[str, str], health_url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{module} exited with {proc.returncode}")
            try:
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} did not get ready")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wrk(
    url: str,
    *,
    headers: Mapping[str, str],
    seconds: int,
    connections: int,
    threads: int = 1,
    script: Path | None = None,
) -> float:
    """Requests per second wrk measured (fails if any request did not answer 2xx)."""
    command = [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out:
        raise RuntimeError(f"non-2xx answers during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(out)
    return float(match.group(1))
