"""Idempotency-Key rules and the errors every side answers with."""

from __future__ import annotations

import re

from shared.errors import BadRequest, Conflict, ValidationFailed, retry_in

# A key is its caller's own: the gateway and any service that deduplicates on it scope it to the tenant
# and the caller (the identity's subject: a user, an API key), so no other caller of the tenant is
# ever handed an answer given to someone else. The errors below are what every side answers.
IDEMPOTENCY_HEADER = "Idempotency-Key"
# On an answer given again for a repeated key (`true`): by the gateway, or by a service that replays
# a keyed write itself.
IDEMPOTENT_REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Visible ASCII, as a Structured Fields string can carry it; long enough for any UUID or ULID.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY_FIELD = {"loc": ["header", "idempotency-key"], "field": "idempotency-key"}


class InvalidIdempotencyKey(BadRequest, code="INVALID_IDEMPOTENCY_KEY", title="Invalid Idempotency-Key"):
    """An `Idempotency-Key` that is empty, longer than 255 characters or not visible ASCII."""

    def __init__(self) -> None:
        super().__init__(
            "Idempotency-Key must be 1 to 255 visible ASCII characters.", errors=[{**_KEY_FIELD, "msg": "invalid"}]
        )


_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def checked_idempotency_key(raw: str | None) -> str | None:
    """The key a request sent, if any; 400 INVALID_IDEMPOTENCY_KEY for one that breaks the rules."""
    if raw is not None and _KEY_RE.match(raw) is None:
        raise InvalidIdempotencyKey()
    return raw


class IdempotencyKeyInUse(Conflict, code="IDEMPOTENCY_KEY_IN_USE", title="Idempotency-Key in use"):
    """The first request with this `Idempotency-Key` is still running: `Retry-After: 1`."""

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            headers=retry_in(1),
        )


class IdempotencyKeyReused(ValidationFailed, code="IDEMPOTENCY_KEY_REUSED", title="Idempotency-Key reused"):
    """The `Idempotency-Key` was used by this caller for a different request (method, path, query or
    body)."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used for a different request; use a new key for a new request.",
            errors=[{**_KEY_FIELD, "msg": "reused"}],
        )


class IdempotentResponseNotStored(Conflict, code="IDEMPOTENT_RESPONSE_NOT_STORED", title="Request already done"):
    """A repeat of a keyed request whose answer was not kept (it held a secret, or was too large)."""
