"""Deprecations: what the API retires, when, and what replaces it, said the same way everywhere.

A `Deprecation` gives the response headers of the contract (`Deprecation: @<unix seconds>`, RFC 9745;
`Sunset: <HTTP date>`, RFC 8594; `Link: <successor>; rel="successor-version"`), the OpenAPI marks
(`deprecated: true` on an operation or a field, with a note saying until when) and is what the
gateway counts (`portico_deprecated_calls_total{method, route}`, every answer carrying `Deprecation`).

Every deprecation of the API is listed here, so the changelog, the headers and the schema agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from pydantic import Field
from starlette.datastructures import MutableHeaders

DEPRECATION = "Deprecation"
SUNSET = "Sunset"
LINK = "Link"


@dataclass(frozen=True, slots=True)
class Deprecation:
    what: str
    since: datetime
    sunset: datetime
    # Where the successor is (a URI reference): its description, or the route that replaces it.
    successor: str
    instead: str

    def headers(self) -> dict[str, str]:
        return {
            DEPRECATION: f"@{int(self.since.timestamp())}",
            SUNSET: format_datetime(self.sunset.astimezone(UTC), usegmt=True),
            LINK: f'<{self.successor}>; rel="successor-version"',
        }

    def note(self) -> str:
        return f"Deprecated since {self.since:%Y-%m-%d}, removed after {self.sunset:%Y-%m-%d}: {self.instead}"

    def mark(self, headers: MutableHeaders) -> None:
        """Adds the headers to an answer (a `Link` it already has is kept, the successor added)."""
        for name, value in self.headers().items():
            if name == LINK and name in headers:
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value

    def field(self, default: Any = None, **kwargs: Any) -> Any:
        """A pydantic field shown `deprecated: true` in OpenAPI, with the note as its description.
        (Through the JSON schema only: pydantic's own `deprecated` would warn each time our code
        reads the field.)"""
        return Field(default, description=self.note(), json_schema_extra={"deprecated": True}, **kwargs)


# The `enabled` field of webhook endpoints, replaced by `status` (which also says why an endpoint
# is disabled: by its owner, or by its receiver answering 410).
WEBHOOK_ENDPOINT_ENABLED = Deprecation(
    what="the enabled field of webhook endpoints",
    since=datetime(2026, 11, 26, tzinfo=UTC),
    sunset=datetime(2027, 5, 31, tzinfo=UTC),
    successor="/v1/webhooks/endpoints",
    instead='send and read "status" ("active" or "disabled") instead of "enabled".',
)
