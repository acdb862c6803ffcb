"""JSON logs with the request id and trace id on every line, and no credential on any."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from shared.request_id import request_id_var

# A record's own attributes; anything else on it came as `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Not written as fields: uvicorn's `color_message` repeats the message, with terminal colours.
_RESERVED = _STANDARD | {"color_message"}

REDACTED = "[REDACTED]"
# Names under which a credential travels: query parameters (`/v1/ws?token=...`, `?api_key=...`), form
# fields, and `extra` keys of a log call.
CREDENTIAL_NAMES = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "client_secret",
)
_CREDENTIAL_KEYS = frozenset(CREDENTIAL_NAMES)
# A credential wherever it stands in a line: the value of a parameter named as one, the bearer token
# of an Authorization header, the password of a URL (`redis://:<password>@host`), or anything shaped
# as an API key (`sk_`), a webhook secret (`whsec_`) or a JWT (three base64url parts, the first a JSON
# object: `eyJ`), whatever it is called.
_CREDENTIAL = re.compile(
    r"(?P<name>(?<![\w-])(?i:" + "|".join(CREDENTIAL_NAMES) + r")=)[^&\s\"'<>\\]+"
    r"|(?P<scheme>(?i:\bbearer\s+))[\w.~+/=-]+"
    r"|(?P<user>://[^/\s:@]*:)[^/\s@]+(?=@)"
    r"|\bsk_[\w-]{8,}"
    r"|\bwhsec_[\w+/=]{8,}"
    r"|\beyJ[\w-]+\.[\w-]+\.[\w-]*"
)


def _hide(match: re.Match[str]) -> str:
    return (match["name"] or match["scheme"] or match["user"] or "") + REDACTED


def redact(text: str) -> str:
    """`text` with every credential in it replaced by `[REDACTED]`."""
    # Each credential above holds one of these; a line without any (most lines: an access line is
    # `GET /v1/users/me 200`) is not searched.
    if (
        "=" in text
        or "@" in text
        or "sk_" in text
        or "eyJ" in text
        or "whsec_" in text
        or "earer" in text
        or "EARER" in text
    ):
        return _CREDENTIAL.sub(_hide, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in _CREDENTIAL_KEYS:
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    return value


class RedactCredentials(logging.Filter):
    """Takes credentials out of every record a handler writes, whichever logger wrote it: the message
    with its arguments, the `extra` fields, the traceback and the stack. uvicorn, for one, logs every
    WebSocket's path with its query string (`/v1/ws?token=<the caller's JWT or API key>`), accepted or
    refused, and an exception's text may hold a URL with a key in it.

    The message is formatted here, once, and kept as the record's message without arguments, so the
    formatter does not format it again."""

    _tracebacks = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A log call whose arguments do not fit its message: logged without them (they may be
            # what holds a credential), rather than raising at the caller from inside logging.
            message = f"{record.msg} [the arguments of this message could not be formatted]"
        record.msg = redact(message)
        record.args = None
        for key in vars(record).keys() - _STANDARD:
            if not key.startswith("_"):
                setattr(record, key, _redact_value(key, getattr(record, key)))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        span_ctx = trace.get_current_span().get_span_context()
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
            "trace_id": format(span_ctx.trace_id, "032x") if span_ctx.is_valid else None,
            "span_id": format(span_ctx.span_id, "016x") if span_ctx.is_valid else None,
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            # The filter's (redacted) text when it ran.
            line["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = record.stack_info
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        span_ctx = trace.get_current_span().get_span_context()
        trace_id = format(span_ctx.trace_id, "032x") if span_ctx.is_valid else "-"
        base = super().format(record)
        return f"{base} request_id={request_id_var.get() or '-'} trace_id={trace_id}"


def configure_logging(service: str, *, level: str = "INFO", json_lines: bool = True) -> None:
    """Routes the root logger (and uvicorn's) to one stderr handler, which takes credentials out of
    every line (`RedactCredentials`). Every logger of the process writes through it: uvicorn's lose
    their own handlers here, gunicorn's in `shared/serving/workers.py`.

    Written synchronously on purpose: uvicorn re-raises SIGTERM once it has shut down, which ends the
    process at once, so lines still queued for a writer thread would be lost (the last lines of a
    shutdown are the ones worth having).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(
        JsonFormatter(service) if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access lines come from our own middleware, which knows the request id and route.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # No line says which thread, process or source line wrote it: logging need not look them up
    # (the stack walk for the source line is most of a record's cost). The logging docs' own advice.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # One INFO line per upstream call would double the log volume; failures still log as warnings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
