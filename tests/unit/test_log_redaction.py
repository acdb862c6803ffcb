"""The handler `configure_logging` installs takes every credential out of every line, whichever logger
wrote it and wherever in the record the credential was: message, arguments, extra fields, traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from jose import jwt

from shared.contract import new_api_key
from shared.logging import REDACTED, JsonFormatter, RedactCredentials, TextFormatter, redact

JWT = jwt.encode({"sub": "u1", "tid": "t1", "exp": 2_000_000_000}, "s" * 32, algorithm="HS256")
KEY = new_api_key()
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(params=["json", "text"])
def written(request) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through a handler as `configure_logging` builds it, into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(JsonFormatter("test") if request.param == "json" else TextFormatter("%(message)s"))
    logger = logging.getLogger(f"test.redaction.{request.param}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, out
    logger.handlers[:] = []


# Named by position: the credentials are made up per run, so ids made of them would differ between runs.
CASES = [
    (f"/v1/ws?token={JWT}", f"/v1/ws?token={REDACTED}"),
    (f"/v1/ws?token={KEY}&last_event_id=4", f"/v1/ws?token={REDACTED}&last_event_id=4"),
    ("/v1/ws?last_event_id=4&access_token=abc.def", f"/v1/ws?last_event_id=4&access_token={REDACTED}"),
    ("GET /x?API_KEY=opaque-value HTTP/1.1", f"GET /x?API_KEY={REDACTED} HTTP/1.1"),
    ("password=hunter2 secret=s3cr3t", f"password={REDACTED} secret={REDACTED}"),
    (f"Authorization: Bearer {JWT}", f"Authorization: Bearer {REDACTED}"),
    ("authorization: bearer opaque.token-value", f"authorization: bearer {REDACTED}"),
    # Shaped as credentials, whatever they are called.
    (f"key was {KEY}.", f"key was {REDACTED}."),
    (f"sent {JWT} twice", f"sent {REDACTED} twice"),
    (f"endpoint secret {WHSEC}", f"endpoint secret {REDACTED}"),
    (f'{{"jwt": "{JWT}"}}', f'{{"jwt": "{REDACTED}"}}'),
    (
        "redis://:p4ss@redis:6379/0 and postgresql+asyncpg://app:pw@db/app",
        f"redis://:{REDACTED}@redis:6379/0 and postgresql+asyncpg://app:{REDACTED}@db/app",
    ),
    ("http://127.0.0.1:8001/v1 a@example.com", "http://127.0.0.1:8001/v1 a@example.com"),
    # Left alone: what only looks a little like one.
    ("idempotency_key=abc monkey=banana", "idempotency_key=abc monkey=banana"),
    ("risk_level=high disk_usage=12", "risk_level=high disk_usage=12"),
    ("/v1/ws?last_event_id=42", "/v1/ws?last_event_id=42"),
]


@pytest.mark.parametrize(("line", "expected"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_redact(line, expected):
    assert redact(line) == expected


def test_credentials_are_taken_out_of_the_message_and_its_arguments(written):
    logger, out = written
    # As uvicorn logs a WebSocket: the path with its query string as an argument.
    logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/v1/ws?token={JWT}")
    logger.info('%s - "WebSocket %s" 403', "127.0.0.1:5000", f"/v1/ws?token={KEY}")
    logger.warning(f"a message built beforehand with {KEY} in it")
    text = out.getvalue()
    assert JWT not in text
    assert KEY not in text
    assert text.count(f"WebSocket /v1/ws?token={REDACTED}") == 2
    assert f"built beforehand with {REDACTED} in it" in text


def test_credentials_are_taken_out_of_extra_fields_and_tracebacks(written):
    logger, out = written
    logger.info(
        "request",
        extra={
            "url": f"https://example.com/?api_key={KEY}",
            "token": "opaque",
            "headers": {"authorization": f"Bearer {JWT}", "accept": "*/*"},
            "color_message": f"\x1b[1m/v1/ws?token={JWT}\x1b[0m",
        },
    )
    try:
        raise ValueError(f"could not reach https://example.com/?token={JWT}")
    except ValueError:
        logger.exception("failed with %s", KEY)
    logger.info("where %s", f"token={JWT}", stack_info=True)
    text = out.getvalue()
    assert JWT not in text
    assert KEY not in text
    assert "opaque" not in text
    assert f"?token={REDACTED}" in text
    if text.startswith("{"):
        first = json.loads(text.splitlines()[0])
        assert first["url"] == f"https://example.com/?api_key={REDACTED}"
        assert first["token"] == REDACTED
        assert first["headers"] == {"authorization": f"Bearer {REDACTED}", "accept": "*/*"}


def test_a_message_whose_arguments_do_not_fit_is_still_written_without_them(written):
    logger, out = written
    logger.info("two %s %s", KEY)
    assert KEY not in out.getvalue()
    assert "could not be formatted" in out.getvalue()
