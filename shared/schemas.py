"""Pieces of the schemas every service and the gateway use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Unpack

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, ConfigDict
from pydantic.config import JsonDict

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


def with_examples(*examples: JsonDict, **config: Unpack[ConfigDict]) -> ConfigDict:
    """A model's config, with any other options in `config`, whose JSON schema (and so the OpenAPI
    document) shows `examples`: `model_config = with_examples({...}, extra="forbid")`."""
    return ConfigDict(json_schema_extra={"examples": [*examples]}, **config)


def _in_utc(value: datetime) -> datetime:
    """The same instant in UTC. An offset can put a time past either end of what a datetime holds
    once in UTC (`0001-01-01T00:00:00+14:00` is in year 0 there): the database layer, which stores
    UTC, would fail on it with a 500, so it is refused here, a 422 naming the field."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall within the years 1 to 9999 once in UTC") from None


# A time a client sends: RFC 3339 with its offset (a naive time is refused), in UTC once validated.
RequestDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
