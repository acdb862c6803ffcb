"""Pieces of the schemas every service and the gateway use."""

from __future__ import annotations

from typing import Any, Unpack

from pydantic import BeforeValidator, ConfigDict
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
