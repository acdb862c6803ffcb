"""Request-scoped values that logging and error rendering read."""

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("portico_request_id", default=None)
