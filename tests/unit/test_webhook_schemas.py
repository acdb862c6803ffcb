"""The times a client sends the webhooks service: read with their offset, kept in UTC, and refused
(naming the field) when UTC would take them out of what can be stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.webhooks.schemas import RecoverRequest


@pytest.mark.parametrize(
    ("since", "utc"),
    [
        ("2026-01-31T10:00:00+02:00", datetime(2026, 1, 31, 8, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00-14:00", datetime(1, 1, 1, 14, tzinfo=UTC)),
    ],
)
def test_since_is_read_with_its_offset_and_kept_in_utc(since, utc):
    parsed = RecoverRequest.model_validate({"since": since}).since
    assert (parsed, parsed.utcoffset()) == (utc, timedelta(0))


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        # Year 0 once in UTC: no datetime holds it.
        ("0001-01-01T00:00:00+14:00", "years 1 to 9999"),
        ("0001-01-01T00:59:59.999999+01:00", "years 1 to 9999"),
        ("9999-12-31T23:59:59-00:01", "years 1 to 9999"),
        ("2026-01-31T10:00:00", "timezone"),
        ("2999-01-01T00:00:00Z", "future"),
    ],
)
def test_a_since_that_cannot_be_used_is_refused_naming_it(since, reason):
    with pytest.raises(ValidationError) as refused:
        RecoverRequest.model_validate({"since": since})
    [error] = refused.value.errors()
    assert error["loc"] == ("since",)
    assert reason in error["msg"], error
