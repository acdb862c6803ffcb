"""No credential reaches a log line, whichever logger writes it. A WebSocket carries its credential in
the query string (`/v1/ws?token=...`), which uvicorn logs for every connection, accepted or refused:
WebSockets are opened with JWTs and API keys, good and bad, against every process of the session's
stack and against a gateway serving with two workers under a gunicorn master at DEBUG level, and then
every process's log is searched for each credential."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jose import jwt
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from scripts.devstack import Stack, free_port
from shared.contract import PROCESSES, new_api_key
from tests.conftest import ROOT
from tests.edge_support import signup

REDACTED = "[REDACTED]"


@pytest.fixture(scope="module")
def workers_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway of the test's own: a gunicorn master with two uvicorn workers, logging at DEBUG."""
    own = Stack(
        ports={**stack.ports, "gateway": free_port()},
        env=stack.env,
        env_for={"gateway": {"GATEWAY_WORKERS": "2", "GATEWAY_LOG_LEVEL": "DEBUG"}},
        log_dir=tmp_path_factory.mktemp("workers-gateway-logs"),
        cwd=ROOT,
        workers=(),
    )
    try:
        own.start_one("gateway")
        own.wait_ready(60)
        yield own
    finally:
        own.stop()


def ws(http_url: str, query: str) -> str:
    return http_url.replace("http://", "ws://", 1) + f"/v1/ws?{query}"


def forged_token() -> str:
    """A JWT of the right shape signed with a key the gateway does not know."""
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "tid": str(uuid.uuid4()), "scope": "orders:read", "iat": now, "exp": now + 600}
    return jwt.encode(claims, uuid.uuid4().hex * 2, algorithm="HS256", headers={"kid": "portico-1"})


def logs(*stacks: Stack) -> dict[str, str]:
    files: dict[str, str] = {}
    for stack in stacks:
        assert stack.log_dir is not None
        for path in Path(stack.log_dir).glob("*.log"):
            files[str(path)] = path.read_text(errors="replace")
    return files


async def test_no_websocket_credential_reaches_any_process_log(stack, gateway, workers_gateway):
    acme = await signup(gateway)
    created = await gateway.post("/v1/api-keys", json={"name": "ws", "scopes": ["orders:read"]}, headers=acme.auth)
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    narrow = await gateway.post("/v1/api-keys", json={"name": "p", "scopes": ["products:read"]}, headers=acme.auth)
    assert narrow.status_code == 201, narrow.text
    products_only = narrow.json()["api_key"]
    forged, made_up = forged_token(), new_api_key()

    for url in (stack.url(), workers_gateway.url()):
        for accepted in (f"token={acme.token}", f"token={key}", f"last_event_id=0&token={key}"):
            async with connect(ws(url, accepted)) as socket:
                await socket.send(json.dumps({"type": "ping"}))
                assert json.loads(await socket.recv()) == {"type": "pong"}
        for refused in (
            f"token={forged}",
            f"token={made_up}",
            f"token={products_only}",
            # Where the gateway does not look for one: refused for want of a token, logged all the same.
            f"access_token={acme.token}",
            f"api_key={key}",
        ):
            with pytest.raises(InvalidStatus) as refusal:
                async with connect(ws(url, refused)):
                    pass
            assert refusal.value.response.status_code == 403

    files = logs(stack, workers_gateway)
    names = {Path(path).stem for path in files}
    assert set(PROCESSES) <= names, sorted(files)
    for credential in (acme.token, key, products_only, forged, made_up):
        # The whole credential, and each part of a JWT that holds anything of the caller's, or the
        # random part of a key.
        parts = [credential, *credential.split(".")[1:]] if credential.count(".") == 2 else [credential[3:]]
        for path, text in files.items():
            # Not `assert part not in text`: a failure would print the credential.
            leaked = any(part in text for part in parts)
            assert not leaked, f"{path} holds a credential"
    # The lines are there, without what they held.
    for gateway_log in (stack.log_dir / "gateway.log", workers_gateway.log_dir / "gateway.log"):
        assert f"WebSocket /v1/ws?token={REDACTED}" in files[str(gateway_log)]
        assert f"WebSocket /v1/ws?api_key={REDACTED}" in files[str(gateway_log)]
