"""Pieces of request schemas every service uses."""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator

# Free text: no control characters (PostgreSQL cannot store NUL, and none belongs in a name).
PLAIN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def refuse_null(message: str) -> BeforeValidator:
    """For the fields of a partial update: leaving one out keeps it, sending null is refused
    (422 with `message`), since no such field can be erased. Use as `Annotated[T | None, ...]`."""

    def check(value: Any) -> Any:
        if value is None:
            raise ValueError(message)
        return value

    return BeforeValidator(check)
