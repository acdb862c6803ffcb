"""Calendar periods (UTC) that usage is counted in: the hour (metering) and the month (quotas)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOUR_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month, UTC: `label` `YYYY-MM` names it in keys."""

    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        return self.start.strftime("%Y-%m")

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)


def month_of(moment: datetime) -> Month:
    start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return Month(start, end)


def current_month() -> Month:
    return month_of(datetime.now(UTC))


def hour_label(hour_start: int) -> str:
    """`YYYYMMDDHH` of the hour that starts at `hour_start` (Unix seconds), as keys name it."""
    return datetime.fromtimestamp(hour_start, UTC).strftime("%Y%m%d%H")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
