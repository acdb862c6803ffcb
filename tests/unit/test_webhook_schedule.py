"""The retry schedule, Retry-After and what each answer means for a delivery."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.webhooks.schedule import decide, next_delay, parse_retry_after
from services.webhooks.settings import WebhooksSettings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SCHEDULE = (5.0, 300.0, 1800.0)


def test_each_delay_is_jittered_by_at_most_ten_percent_either_way():
    rng = random.Random(7)
    for attempts_made, delay in enumerate(SCHEDULE, start=1):
        seen = [next_delay(SCHEDULE, attempts_made, None, rng) for _ in range(2000)]
        assert min(seen) >= delay * 0.9
        assert max(seen) <= delay * 1.1
        assert max(seen) - min(seen) > delay * 0.15  # it does spread
    assert next_delay(SCHEDULE, len(SCHEDULE) + 1, None, rng) is None


def test_retry_after_replaces_the_delay_within_bounds():
    assert next_delay(SCHEDULE, 1, 42.0) == 42.0
    assert next_delay(SCHEDULE, 1, 10**9) == 1800.0  # the longest delay of the schedule
    assert next_delay(SCHEDULE, 1, 0) == 1.0
    assert next_delay(SCHEDULE, 4, 42.0) is None  # no attempt is left, whatever the receiver asks


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Thu, 01 Jan 2026 12:01:30 GMT", 90.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_in_seconds_or_as_a_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        "²",  # passes str.isdigit, which float refuses
        "1²",
        "١٢",  # digits, but not ASCII ones
        "\udcb2",  # a byte that is not UTF-8, as the HTTP client hands it on
        "\x00",
        "Thu, 01 Jan 99999999999999999999 12:00:00 GMT",
        "Thu, 99999999999999999999 Jan 2026 12:00:00 GMT",
        "Thu, 01 Jan 2026 99999999999999999999:00:00 GMT",
        "Thu, 01 Jan 2026 12:00:00 +99999999999999999999",
        "Thu, 01 Jan 2026 12:00:00 +9999",
        "Thu, 01 Jan 10000 12:00:00 GMT",
    ],
)
def test_a_retry_after_that_cannot_be_read_is_ignored(header):
    assert parse_retry_after(header, NOW) is None
    # The schedule's delay, as when the receiver asks for nothing.
    decision = decide(503, header, 1, SCHEDULE, NOW, random.Random(1))
    assert (decision.status, decision.outcome) == ("pending", "failed_attempt")
    assert NOW + timedelta(seconds=4.5) <= decision.next_attempt_at <= NOW + timedelta(seconds=5.5)


@pytest.mark.parametrize(
    "header", ["9" * 400, "9" * 5000, "Fri, 31 Dec 9999 23:59:59 GMT", "Fri, 31 Dec 9999 23:59:59 -2359"]
)
def test_a_retry_after_beyond_any_schedule_waits_the_longest_delay(header):
    asked = decide(429, header, 1, SCHEDULE, NOW, random.Random(1))
    assert asked.next_attempt_at == NOW + timedelta(seconds=max(SCHEDULE))


def test_what_each_answer_means():
    rng = random.Random(1)
    assert decide(204, None, 1, SCHEDULE, NOW, rng).status == "succeeded"
    gone = decide(410, None, 1, SCHEDULE, NOW, rng)
    assert (gone.status, gone.outcome) == ("cancelled", "cancelled")
    retry = decide(500, "60", 1, SCHEDULE, NOW, rng)
    assert (retry.status, retry.outcome) == ("pending", "failed_attempt")
    assert NOW + timedelta(seconds=4.5) <= retry.next_attempt_at <= NOW + timedelta(seconds=5.5)
    asked = decide(429, "60", 1, SCHEDULE, NOW, rng)
    assert asked.next_attempt_at == NOW + timedelta(seconds=60)
    unavailable = decide(503, "Thu, 01 Jan 2026 12:01:00 GMT", 2, SCHEDULE, NOW, rng)
    assert unavailable.next_attempt_at == NOW + timedelta(seconds=60)
    for code in (None, 301, 400, 500):
        last = decide(code, None, len(SCHEDULE) + 1, SCHEDULE, NOW, rng)
        assert (last.status, last.next_attempt_at, last.outcome) == ("failed", None, "dead_lettered")


def test_schedule_and_lease_settings():
    assert WebhooksSettings().retry_schedule_seconds == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert WebhooksSettings(retry_schedule_seconds="1, 2.5,30").retry_schedule_seconds == (1, 2.5, 30)
    for bad in ("", "1,,2", "a,b", "-1", ",".join(["1"] * 51)):
        with pytest.raises(ValueError, match="retry_schedule_seconds"):
            WebhooksSettings(retry_schedule_seconds=bad)
    with pytest.raises(ValueError, match="delivery_lease_seconds must be at least"):
        WebhooksSettings(delivery_timeout_seconds=30, delivery_lease_seconds=20)
