"""`GET /v1/usage`: the caller's tenant's metered requests, by hour or day, and its monthly quota.

Scope `usage:read` (tenant admins; members do not hold it). The counts are those of the metering
(`gateway/edge/metering.py`): every answer the gateway gave the tenant, by route template and status
class, counted in the hour (UTC) it was answered. A range covers the hours that overlap
`[from, to)`, at most `MAX_RANGE_DAYS` days, within the retention (`GATEWAY_USAGE_RETENTION_DAYS`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, Field

from gateway.deps import RequireAccess, SettingsDep, UsageDep
from gateway.edge.access import Access
from gateway.edge.metering import STATUS_CLASSES, QuotaUse
from gateway.edge.periods import HOUR_SECONDS, current_month, rfc3339
from gateway.openapi import operation_docs
from shared.contract import USAGE_READ, Identity
from shared.errors import ValidationFailed
from shared.schemas import with_examples

router = APIRouter(prefix="/v1", tags=["usage"])

UsageReaderIdentity = Annotated[Identity, Depends(RequireAccess(Access(scope=USAGE_READ)))]
MAX_RANGE_DAYS = 31
Granularity = Literal["hour", "day"]


class UsageItem(BaseModel):
    start: str = Field(description="The start of the hour or day (UTC, RFC 3339).")
    route: str = Field(description="The route template (`unmatched`: no route).")
    status_class: Literal["2xx", "4xx", "5xx"] = Field(description="`2xx` is every answer under 400.")
    requests: int


class UsageTotals(BaseModel):
    requests: int
    by_status_class: dict[str, int]


class Usage(BaseModel):
    model_config = with_examples(
        {
            "items": [
                {"start": "2026-12-07T10:00:00Z", "route": "/v1/orders", "status_class": "2xx", "requests": 118},
                {"start": "2026-12-07T10:00:00Z", "route": "/v1/orders", "status_class": "4xx", "requests": 3},
            ],
            "totals": {"requests": 121, "by_status_class": {"2xx": 118, "4xx": 3, "5xx": 0}},
            "quota": {
                "period_start": "2026-12-01T00:00:00Z",
                "period_end": "2027-01-01T00:00:00Z",
                "limit": 10_000_000,
                "used": 18_766,
            },
        }
    )

    items: list[UsageItem]
    totals: UsageTotals
    quota: QuotaUse


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        message, errors=[{"loc": ["query", field], "field": field, "msg": message, "type": "value_error"}]
    )


USAGE_DOCS = operation_docs("GET", status_code=200, credentials="any")


@router.get(
    "/usage",
    name="usage",
    operation_id="usage",
    summary="The tenant's requests by hour or day, route and status class, and its monthly quota",
    description=(
        "Every answer the gateway gave the caller's tenant in `[from, to)` (at most 31 days, within the "
        "retention), counted by hour or UTC day, route template and status class, with the totals of the "
        "range and the current month's quota. Tenant admins only (scope `usage:read`); it stays reachable "
        "past the monthly quota."
    ),
    response_model=Usage,
    **USAGE_DOCS,
)
async def usage(
    identity: UsageReaderIdentity,
    reader: UsageDep,
    settings: SettingsDep,
    start: Annotated[
        AwareDatetime | None,
        Query(alias="from", description="RFC 3339, with an offset; default: the start of this month (UTC)."),
    ] = None,
    end: Annotated[
        AwareDatetime | None, Query(alias="to", description="RFC 3339, with an offset (excluded); default: now.")
    ] = None,
    granularity: Annotated[Granularity, Query()] = "hour",
) -> Usage:
    tenant_id = identity.for_tenant().tenant_id
    now = datetime.now(UTC)
    start = start if start is not None else current_month().start
    end = end if end is not None else now
    if start > end:
        raise _invalid("from", "`from` must not be after `to`.")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise _invalid("to", f"A range spans at most {MAX_RANGE_DAYS} days.")
    if start < now - timedelta(days=settings.usage_retention_days):
        raise _invalid("from", f"Usage is kept {settings.usage_retention_days} days; `from` is older.")
    first = int(start.timestamp()) // HOUR_SECONDS * HOUR_SECONDS
    current = int(now.timestamp()) // HOUR_SECONDS * HOUR_SECONDS
    # No hour after the current one holds a count: a range reaching past it is read up to it (one in
    # the year 9999 need not name hours the stores cannot).
    hours = [hour for hour in range(first, int(end.timestamp()), HOUR_SECONDS) or [first] if hour <= current]
    counts = await reader.hours(tenant_id, hours) if hours else []
    grouped: dict[tuple[int, str, str], int] = defaultdict(int)
    by_class = dict.fromkeys(STATUS_CLASSES, 0)
    for hour, fields in zip(hours, counts, strict=True):
        bucket = hour if granularity == "hour" else hour // 86_400 * 86_400
        for field, n in fields.items():
            status_class, _, route = field.partition(" ")
            if status_class not in by_class:
                continue
            grouped[(bucket, route, status_class)] += n
            by_class[status_class] += n
    items = [
        UsageItem(
            start=rfc3339(datetime.fromtimestamp(bucket, UTC)),
            route=route,
            status_class=status_class,
            requests=n,
        )
        for (bucket, route, status_class), n in sorted(grouped.items())
    ]
    return Usage(
        items=items,
        totals=UsageTotals(requests=sum(by_class.values()), by_status_class=by_class),
        quota=await reader.quota(identity),
    )
