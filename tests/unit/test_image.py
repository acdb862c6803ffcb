"""No Docker engine runs here, so the image is checked through its Dockerfile, its build context and
its healthcheck script, which runs here as it runs in a container."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from scripts.devstack import DEFAULT_PORTS, PROCESSES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = []
            result[rest.split(" AS ")[-1].strip()] = current
        else:
            current.append((keyword, rest))
    return result


def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("portico_healthcheck", HEALTHCHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multi_stage_build_installs_from_the_lock():
    build, runtime = list(stages().values())
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "uv sync --locked --no-install-project" in runs, "dependencies come from uv.lock, before the code"
    assert "uv sync --locked --no-editable" in runs
    assert ("COPY", "--from=build /opt/portico /opt/portico") in runtime, "the runtime stage takes only the venv"
    assert not any(keyword == "RUN" and "uv" in rest for keyword, rest in runtime)


def test_image_and_make_install_use_the_same_uv():
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert makefile
    assert dockerfile
    assert makefile[1] == dockerfile[1]


def test_runtime_stage_is_non_root_with_a_healthcheck_and_a_default_command():
    runtime = dict(list(stages().values())[-1])
    user = runtime["USER"].split(":")[0]
    assert user.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(user) != 0
    assert runtime["HEALTHCHECK"].endswith('CMD ["portico-healthcheck"]')
    assert runtime["CMD"] == '["python", "-m", "gateway", "serve"]'
    for name in PROCESSES:
        prefix = "GATEWAY_" if name == "gateway" else f"{name.upper()}_"
        assert f"{prefix}HOST=0.0.0.0" in runtime["ENV"], f"{name} would listen on loopback only"


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    patterns = dockerignore()
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources += [word for word in rest.split()[:-1] if not word.startswith("--")]
        sources += re.findall(r"type=bind,source=([^,\s]+)", rest)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"


def test_dockerignore_keeps_local_state_and_secrets_out():
    patterns = dockerignore()
    for path in (".git", ".venv", "var", ".env", "shared/__pycache__", "var/users.db", "tests", "key.pem"):
        assert ignored(path, patterns), path


@pytest.mark.parametrize(
    ("cmdline", "env", "port"),
    [
        *[(f"python -m {module} serve", {}, DEFAULT_PORTS[name]) for name, module in PROCESSES.items()],
        ("python -m gateway", {}, 8000),
        ("python -m services.webhooks worker", {}, 8005),
        ("python -m services.webhooks worker", {"WEBHOOKS_WORKER_PORT": "9105", "WEBHOOKS_PORT": "9104"}, 9105),
        ("python -m services.orders serve", {"ORDERS_PORT": "9002"}, 9002),
        ("sh -c python -m services.users migrate && exec python -m services.users serve", {}, 8001),
    ],
)
def test_healthcheck_finds_the_process_and_its_port(cmdline, env, port):
    assert healthcheck().ready_url(cmdline, env) == f"http://127.0.0.1:{port}/health/ready"


def test_healthcheck_refuses_what_is_no_portico_process():
    with pytest.raises(LookupError):
        healthcheck().ready_url("postgres -D /var/lib/postgresql/data", {})
    with pytest.raises(LookupError):
        healthcheck().ready_url("python -m http.server", {})


@pytest.fixture
def ready_server() -> Iterator[tuple[str, list[int]]]:
    statuses = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(statuses[0])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health/ready", statuses
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_healthcheck_exit_status_follows_the_ready_answer(ready_server):
    url, statuses = ready_server
    assert run_healthcheck(url).returncode == 0
    statuses[0] = 503
    failed = run_healthcheck(url)
    assert failed.returncode == 1
    assert "503" in failed.stderr


def test_healthcheck_fails_when_nothing_listens():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]
    failed = run_healthcheck(f"http://127.0.0.1:{port}/health/ready")
    assert failed.returncode == 1
    assert "unhealthy" in failed.stderr
