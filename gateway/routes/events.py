"""Real time: the tenant's order events as server-sent events (`GET /v1/events`).

Every gateway instance serves every tenant: the events come from the shared streams
(`gateway/realtime/`). An event's SSE `id` is its id in the orders feed, so a client resumes with
`Last-Event-ID` on any instance and gets exactly what came after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from gateway.deps import AuthenticatorDep, CallerDep, HubDep, RequireAccess, SettingsDep, current_caller
from gateway.edge.access import Access
from gateway.edge.authentication import Authenticator, Caller
from gateway.edge.pipeline import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER, TRANSIENT_FAILURES
from gateway.openapi import operation_docs
from gateway.realtime.hub import Admission, Expired, Hub, Interrupted, NeverSent, Overflowed
from gateway.realtime.tasks import cancel_and_wait
from gateway.settings import GatewaySettings
from services.orders.schemas import EXAMPLE_ORDER
from shared.contract import CACHE_CONTROL, DEFAULT_PLAN, ORDERS_READ, PLANS, WEBSOCKET_MAX_MESSAGE_BYTES, Identity
from shared.errors import BadRequest, PorticoError, TooManyRequests, retry_in

logger = logging.getLogger(__name__)
T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["events"])

# Who may follow the tenant's order events (SSE and WebSocket): whoever may read its orders.
ORDER_EVENTS_ACCESS = Access(scope=ORDERS_READ)
EventsReader = Annotated[Identity, Depends(RequireAccess(ORDER_EVENTS_ACCESS))]
MAX_EVENT_ID = 2**63 - 1
# Digits of the largest id: a longer number is no id, and is refused before `int()` reads it (which
# costs time quadratic in its length, and refuses more than 4,300 digits with a ValueError).
MAX_EVENT_ID_DIGITS = len(str(MAX_EVENT_ID))
# What a store or service blip raises while a stream runs: the stream ends and the client reconnects
# (SSE: with Last-Event-ID; WebSocket: close 1013 "try again later") rather than a 500 or a 1011.
STREAM_FAILURES = (*TRANSIENT_FAILURES, Interrupted)


class InvalidLastEventId(BadRequest, code="INVALID_LAST_EVENT_ID", title="Invalid Last-Event-ID"):
    """A `Last-Event-ID` that is not an event id this API sent."""


class EventsExpired(PorticoError, status=410, code="EVENTS_EXPIRED", title="Events no longer kept"):
    """`GET /v1/events` resuming from before what the orders feed still keeps: `pruned_through`,
    and `"resync": "/v1/orders"` (read the state, then reconnect without an id)."""


async def resumable(hub: Hub, tenant_id: str, after: int | None) -> None:
    """410 when the events after `after` are no longer all kept: the client resyncs instead; 400 when
    `after` is past every event ever written (no id this API sent)."""
    if after is None:
        return
    try:
        await hub.check_resumable(tenant_id, after)
    except Expired as exc:
        raise EventsExpired(
            f"Events after {after} are no longer kept (the oldest kept comes after {exc.pruned_through}). Resync: "
            "read the current state (GET /v1/orders), then open the stream without Last-Event-ID.",
            extra={"last_event_id": after, "pruned_through": exc.pruned_through, "resync": "/v1/orders"},
        ) from None
    except NeverSent:
        raise not_an_event_id("No event with this Last-Event-ID was ever sent: it is past the newest one.") from None


class ConnectionLimitReached(TooManyRequests, code="REALTIME_CONNECTION_LIMIT", title="Too many real-time connections"):
    """The tenant holds its plan's real-time connections on this gateway instance
    (`GATEWAY_REALTIME_CONNECTIONS_*`): `Retry-After`."""


def parse_event_id(raw: str | None) -> int | None:
    """An event id a client sends back (`Last-Event-ID`): a decimal id from this API, or nothing."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_EVENT_ID_DIGITS or int(text) > MAX_EVENT_ID:
        raise not_an_event_id()
    return int(text)


def not_an_event_id(
    detail: str = "Last-Event-ID must be the id of an event this API sent (a decimal number).",
) -> InvalidLastEventId:
    return InvalidLastEventId(detail, errors=[{"field": "Last-Event-ID", "type": "event_id", "msg": "not an event id"}])


def admit(hub: Hub, identity: Identity, settings: GatewaySettings) -> Admission:
    """One of the tenant's real-time connections on this instance (429 when its plan's are all taken)."""
    assert identity.tenant_id is not None
    plan = identity.plan if identity.plan in PLANS else DEFAULT_PLAN
    cap = settings.realtime_connection_caps()[plan]
    admission = hub.admit(identity.tenant_id, cap)
    if admission is None:
        raise ConnectionLimitReached(
            f"The {plan} plan allows {cap} real-time connections per gateway instance; close one.",
            headers=retry_in(5),
            extra={"limit": cap, "current_plan": plan},
        )
    return admission


EVENTS_DOCS = operation_docs(
    "GET",
    status_code=200,
    credentials="any",
    errors=[InvalidLastEventId, EventsExpired, ConnectionLimitReached],
    conditional=False,
)
EVENTS_DOCS["responses"][200].update(
    description="The tenant's order events, as they happen",
    content={
        "text/event-stream": {
            "schema": {"type": "string", "description": "Server-sent events."},
            "example": (
                f": stream open\nretry: {GatewaySettings.model_fields['sse_retry_ms'].default}\n\n"
                "id: 1042\nevent: order.created\ndata: "
                + json.dumps(
                    {"type": "order.created", "timestamp": EXAMPLE_ORDER["created_at"], "data": EXAMPLE_ORDER},
                    separators=(",", ":"),
                )
                + "\n\n"
            ),
        }
    },
)


@router.get(
    "/events",
    operation_id="events",
    summary="The tenant's order events, as server-sent events",
    response_class=EventSourceResponse,
    **EVENTS_DOCS,
)
async def events(
    identity: EventsReader,
    caller: CallerDep,
    authenticator: AuthenticatorDep,
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
    await resumable(hub, tenant, after)
    admission = admit(hub, identity, settings)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        watch = asyncio.create_task(watch_credentials(authenticator, settings, caller))
        try:
            yield ServerSentEvent(comment="stream open", retry=settings.sse_retry_ms)
            async for event in until_done(hub.stream(tenant, after), watch):
                yield ServerSentEvent(data=event.data, event=event.type, id=str(event.id))
            # Ends here when the credentials stopped working (expired, revoked): the client's
            # reconnect with fresh ones resumes from its last id.
        except (Overflowed, Expired):
            # The client fell too far behind (or what it missed is gone): the stream ends; the client
            # reconnects with its last id (and gets a 410 if it must resync).
            return
        except STREAM_FAILURES as exc:
            logger.warning("event stream of tenant %s ended: %s: %s", tenant, type(exc).__name__, exc)
            return
        finally:
            watch.cancel()
            admission.release()

    return EventSourceResponse(
        stream(),
        ping=settings.sse_heartbeat_seconds,
        send_timeout=settings.events_send_timeout_seconds,
        headers={CACHE_CONTROL: "no-cache", "X-Accel-Buffering": "no"},
        # Runs when the response ends without the stream having started (the client left at once).
        background=BackgroundTask(admission.release),
    )


# How often a connection made with an API key checks that the key still works (revoked, expired).
API_KEY_RECHECK_SECONDS = 5.0


async def watch_credentials(authenticator: Authenticator, settings: GatewaySettings, caller: Caller) -> str:
    """Returns (with the reason) when the credentials a stream was opened with stop working: at the
    access token's expiry; for an API key, the first recheck that finds it revoked or expired.
    Raises what the users service raises when it cannot tell."""
    if caller.expires_at is not None:
        await asyncio.sleep(max(0.0, caller.expires_at - time.time()))
        return "token expired"
    while True:
        await asyncio.sleep(max(settings.api_key_cache_ttl_seconds, API_KEY_RECHECK_SECONDS))
        if not await authenticator.still_valid(caller):
            return "API key revoked or expired"


async def until_done(source: AsyncIterator[T], stop: asyncio.Task[Any]) -> AsyncIterator[T]:
    """The items of `source` until `stop` finishes (its exception, if any, is raised)."""
    following: asyncio.Future[T] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(source))
            await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                stop.result()
                return
            try:
                item = following.result()
            except StopAsyncIteration:
                return
            following = None
            yield item
    finally:
        # The pending read first (ours stopped, or the reader was cancelled): `source` can only be
        # closed once nothing runs in it.
        if following is not None:
            await cancel_and_wait(following)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


@router.websocket("/ws")
async def websocket_events(
    websocket: WebSocket,
    hub: HubDep,
    settings: SettingsDep,
    authenticator: AuthenticatorDep,
    last_event_id: str | None = None,
) -> None:
    """The tenant's order events as JSON text frames `{"id", "type", "data"}`; `{"type": "ping"}` is
    answered `{"type": "pong"}`. Refused before it is accepted (close 1008, an HTTP 403 to the
    upgrade) without good credentials in `?token=` or quota (the edge checks both, as for a
    request), the `orders:read` scope, or a free connection of the plan."""
    try:
        caller = await current_caller(websocket)
        ORDER_EVENTS_ACCESS.check(caller.identity)
        after = parse_event_id(last_event_id)
        assert caller.identity.tenant_id is not None
        await resumable(hub, caller.identity.tenant_id, after)
        admission = admit(hub, caller.identity, settings)
    except STREAM_FAILURES as exc:
        # The users service or the event store could not answer: not the client's fault; accepted
        # only to tell it to come back (1013), which a refusal of the upgrade cannot say.
        logger.warning("WebSocket connection deferred: %s: %s", type(exc).__name__, exc)
        await websocket.accept()
        await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="service unavailable: reconnect later")
        return
    except PorticoError as exc:
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=exc.code)
        return
    try:
        await websocket.accept()
        code, reason = await WsSession(websocket, hub, settings, authenticator, caller, after).run()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=code, reason=reason)
    finally:
        admission.release()


# What the server answers to what a client sends on /v1/ws (any other message is an error, answered
# without closing the connection).
PONG = '{"type":"pong"}'
MESSAGE_ERROR = json.dumps({"type": "error", "detail": 'send {"type": "ping"} or nothing'}, separators=(",", ":"))
BINARY_FRAME_ERROR = json.dumps(
    {"type": "error", "detail": 'binary frames are not read: send {"type": "ping"} or nothing'}, separators=(",", ":")
)
# A message longer than `WEBSOCKET_MAX_MESSAGE_BYTES` (RFC 6455's "message too big").
CLOSE_MESSAGE_TOO_BIG = 1009


def too_big(message: str | bytes) -> bool:
    """Over `WEBSOCKET_MAX_MESSAGE_BYTES`, text counted in UTF-8 bytes (encoded only when it is not
    ASCII, one byte a character, and its characters alone do not already say so)."""
    if len(message) > WEBSOCKET_MAX_MESSAGE_BYTES:
        return True
    return isinstance(message, str) and not message.isascii() and len(message.encode()) > WEBSOCKET_MAX_MESSAGE_BYTES


def is_ping(text: str) -> bool:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the parser goes (`[[[[...`), no ping either.
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


@dataclass(eq=False)
class WsSession:
    """One accepted WebSocket: events out, pings in, and the reasons to close it, whichever comes first."""

    websocket: WebSocket
    hub: Hub
    settings: GatewaySettings
    authenticator: Authenticator
    caller: Caller
    after: int | None
    sending: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def send(self, text: str) -> None:
        async with self.sending:
            await asyncio.wait_for(self.websocket.send_text(text), self.settings.events_send_timeout_seconds)

    async def run(self) -> tuple[int, str]:
        """Answers the close code and reason (1000 when the client left)."""
        tasks = [
            asyncio.create_task(self.events()),
            asyncio.create_task(self.messages()),
            asyncio.create_task(self.credentials()),
            asyncio.create_task(self.shutdown()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*tasks)
        return next(iter(done)).result()

    async def events(self) -> tuple[int, str]:
        tenant = self.caller.identity.tenant_id
        assert tenant is not None
        try:
            async for event in self.hub.stream(tenant, self.after):
                await self.send(event.frame())
        except (Overflowed, TimeoutError):
            return CLOSE_TRY_AGAIN_LATER, "too far behind: reconnect with last_event_id"
        except Expired:
            return CLOSE_POLICY_VIOLATION, EventsExpired.error_code
        except STREAM_FAILURES as exc:
            logger.warning("WebSocket of tenant %s closed: %s: %s", tenant, type(exc).__name__, exc)
            return CLOSE_TRY_AGAIN_LATER, "service unavailable: reconnect with last_event_id"
        except (WebSocketDisconnect, RuntimeError):
            pass
        return 1000, ""

    async def messages(self) -> tuple[int, str]:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return 1000, ""
                text = message.get("text")
                if too_big(text if text is not None else message.get("bytes") or b""):
                    # The server refuses such a message before the app sees it (uvicorn's
                    # `ws_max_size`); this holds when the app is served some other way, so that no
                    # client makes the loop parse megabytes.
                    return CLOSE_MESSAGE_TOO_BIG, f"messages are {WEBSOCKET_MAX_MESSAGE_BYTES} bytes at most"
                if text is None:
                    await self.send(BINARY_FRAME_ERROR)
                elif is_ping(text):
                    await self.send(PONG)
                else:
                    await self.send(MESSAGE_ERROR)
        except (WebSocketDisconnect, RuntimeError):
            # RuntimeError: Starlette's, the socket used once it is closed.
            return 1000, ""
        except TimeoutError:
            return CLOSE_TRY_AGAIN_LATER, "too far behind: reconnect with last_event_id"

    async def credentials(self) -> tuple[int, str]:
        try:
            return CLOSE_POLICY_VIOLATION, await watch_credentials(self.authenticator, self.settings, self.caller)
        except STREAM_FAILURES as exc:
            logger.warning("WebSocket API key recheck failed: %s: %s", type(exc).__name__, exc)
            return CLOSE_TRY_AGAIN_LATER, "service unavailable: reconnect with last_event_id"

    async def shutdown(self) -> tuple[int, str]:
        await self.hub.draining.wait()
        return CLOSE_TRY_AGAIN_LATER, "server shutting down"
