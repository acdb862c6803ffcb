"""The README's walkthrough, run as printed, against the embedded defaults `make run` uses
(SQLite per service, in-process gateway stores), on free ports."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from scripts.devstack import PROCESSES, Stack, free_port

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walkthrough") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the README has no walkthrough block"
    return match.group(1)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the README walkthrough")
    workdir = tmp_path_factory.mktemp("embedded")
    stack = Stack(
        ports={name: free_port() for name in PROCESSES},
        env={"WEBHOOKS_ALLOW_PRIVATE_URLS": "true", "PYTHONUNBUFFERED": "1"},
        log_dir=workdir / "log",
        cwd=workdir,
    )
    stack.migrate()
    try:
        stack.start(timeout=60)
        yield stack
    finally:
        stack.stop()


def test_the_readme_walkthrough_works_as_printed(embedded):
    script = walkthrough()
    assert "GW=http://127.0.0.1:8000\n" in script
    assert "HOOK_PORT=9000\n" in script
    script = script.replace("GW=http://127.0.0.1:8000\n", f"GW={embedded.url()}\n", 1)
    script = script.replace("HOOK_PORT=9000\n", f"HOOK_PORT={free_port()}\n", 1)
    # Its own process group: the receiver it starts in the background goes too, whatever happens.
    proc = subprocess.Popen(
        ["bash", "-eo", "pipefail", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err + out
    assert '"email":"admin@acme.example.com"' in out
    assert '"stock_after":15' in out
    assert out.lower().count("idempotent-replayed: true") == 1
    assert '"stock":13' in out
    assert '"status":"cancelled"' in out
    assert '"stock":15' in out
    assert '"event_type":"order.created"' in out
    assert '"event_type":"order.cancelled"' in out
    # The receiver verified both events, then the replay, which carries the same webhook-id.
    verified = re.findall(r"^verified webhook-id=(msg_\w+) type=(order\.\w+) order=\S+$", out, re.M)
    assert sorted({kind for _, kind in verified}) == ["order.cancelled", "order.created"], out
    assert len(verified) == 3, out
    assert len({webhook_id for webhook_id, _ in verified}) == 2
    assert out.count('"status":"succeeded"') >= 2
    assert '"attempt_log":[{"at":' in out
    assert " 202\n" in out
    assert "ratelimit-policy:" in out.lower()
    assert '"error_code":"INSUFFICIENT_SCOPE"' in out
    assert "revoke: 204" in out
    assert '"error_code":"INVALID_API_KEY"' in out
    assert '"error_code":"PLAN_UPGRADE_REQUIRED"' in out
    assert re.search(r"^\s+99 200$", out, re.M)
    assert "HTTP/1.1 429 Too Many Requests" in out
    assert "retry-after:" in out.lower()
