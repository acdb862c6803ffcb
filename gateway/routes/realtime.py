"""Real time: the tenant's order events as server-sent events (`GET /v1/events`).

Every gateway instance serves every tenant: the events come from the shared streams
(`gateway/realtime/`). An event's SSE `id` is its id in the orders feed, so a client resumes with
`Last-Event-ID` on any instance and gets exactly what came after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from gateway.deps import RequireScope, SettingsDep, state
from gateway.openapi import operation_docs
from gateway.realtime.hub import Admission, Hub, Overflowed
from gateway.settings import GatewaySettings
from shared.contract import DEFAULT_PLAN, PLANS, Identity
from shared.errors import BadRequest, TooManyRequests

router = APIRouter(prefix="/v1", tags=["events"])

EventsReader = Annotated[Identity, Depends(RequireScope("orders:read"))]
HubDep = Annotated[Hub, Depends(state.provide(lambda s: s.events))]
MAX_EVENT_ID = 2**63 - 1


class InvalidLastEventId(BadRequest, code="INVALID_LAST_EVENT_ID", title="Invalid Last-Event-ID"): ...


class ConnectionLimitReached(
    TooManyRequests, code="REALTIME_CONNECTION_LIMIT", title="Too many real-time connections"
): ...


def parse_event_id(raw: str | None) -> int | None:
    """An event id a client sends back (`Last-Event-ID`): a decimal id from this API, or nothing."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_EVENT_ID:
        raise InvalidLastEventId(
            "Last-Event-ID must be the id of an event this API sent (a decimal number).",
            errors=[{"field": "Last-Event-ID", "type": "event_id", "msg": "not an event id"}],
        )
    return int(text)


def admit(hub: Hub, identity: Identity, settings: GatewaySettings) -> Admission:
    """One of the tenant's real-time connections on this instance (429 when its plan's are all taken)."""
    assert identity.tenant_id is not None
    plan = identity.plan if identity.plan in PLANS else DEFAULT_PLAN
    cap = settings.realtime_connection_caps()[plan]
    admission = hub.admit(identity.tenant_id, cap)
    if admission is None:
        raise ConnectionLimitReached(
            f"The {plan} plan allows {cap} real-time connections per gateway instance; close one.",
            headers={"Retry-After": "5"},
            extra={"limit": cap, "current_plan": plan},
        )
    return admission


EVENTS_DOCS, EVENTS_EXTRA = operation_docs(
    "GET", status_code=200, credentials="any", errors=[InvalidLastEventId, ConnectionLimitReached], conditional=False
)
EVENTS_DOCS[200].update(
    description="The tenant's order events, as they happen",
    content={"text/event-stream": {"schema": {"type": "string", "description": "Server-sent events."}}},
)


@router.get(
    "/events",
    operation_id="events",
    response_class=EventSourceResponse,
    responses=EVENTS_DOCS,
    openapi_extra=EVENTS_EXTRA,
)
async def events(
    identity: EventsReader,
    hub: HubDep,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[
        str | None, Query(description="As the Last-Event-ID header, for clients that cannot set headers.")
    ] = None,
) -> EventSourceResponse:
    """The tenant's order events as server-sent events: `id` (resume from it with Last-Event-ID),
    `event` (the type) and `data` (the webhook envelope); a comment line as heartbeat."""
    after = parse_event_id(last_event_id_header if last_event_id_header is not None else last_event_id)
    tenant = identity.tenant_id
    assert tenant is not None
    admission = admit(hub, identity, settings)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(comment="stream open", retry=settings.sse_retry_ms)
            async for event in hub.stream(tenant, after):
                yield ServerSentEvent(data=event.data, event=event.type, id=str(event.id))
        except Overflowed:
            # The client fell too far behind: the stream ends, the client reconnects with its last id.
            return
        finally:
            admission.release()

    return EventSourceResponse(
        stream(),
        ping=settings.sse_heartbeat_seconds,
        send_timeout=settings.events_send_timeout_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Runs when the response ends without the stream having started (the client left at once).
        background=BackgroundTask(admission.release),
    )
