"""The edge's admission stage: the caller's rank (its plan), known before any costly work.

The edge admits a request (`shared/admission.py`) after the route is matched and the host checked,
and before authentication, which may ask the users service about an API key. So the rank comes from
what the gateway already knows about the credential, without a lookup:

- no credentials (or a route for callers without them): `anonymous`;
- an access token verified already (the verified-token cache): its plan;
- an access token not verified yet: the `plan` its payload claims, read without checking the
  signature. A forged claim gains nothing: the request is authenticated right after admission and a
  bad token is refused with 401 (counted against the client address), so it holds a slot for no
  more than a signature check;
- an API key the gateway remembers (its key cache): its plan;
- an API key not looked up yet: `free`, as the lowest plan. Its first admitted request looks it up,
  and the key cache then knows it for `GATEWAY_API_KEY_CACHE_TTL_SECONDS`.

Under overload the server's protocol ranks requests the same way, from their heads, before the route
is matched (`Shedder`): there a route open to callers without credentials is ranked by the caller's
credentials, never lower than the edge ranks it, so the protocol refuses only what the edge would.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.edge.authentication import Authenticator
from shared.admission import RANK_OF
from shared.asgi import find_headers
from shared.contract import PLANS

ANONYMOUS_RANK = RANK_OF["anonymous"]
LOWEST_PLAN_RANK = RANK_OF[PLANS[0]]


def caller_rank(raw: Sequence[tuple[bytes, bytes]], authenticator: Authenticator) -> int:
    """The admission rank of the caller of a request with the raw headers `raw` (names in lower
    case), as the edge's stage and the server's protocol (`Shedder`) both see them (see the module's
    docstring)."""
    authorization, api_key = find_headers(raw, b"authorization", b"x-api-key")
    if api_key is None and authorization is None:
        return ANONYMOUS_RANK
    plan = authenticator.known_plan(authorization, api_key)
    rank = RANK_OF.get(plan, LOWEST_PLAN_RANK) if plan is not None else LOWEST_PLAN_RANK
    # A claim of "anonymous" with credentials is no plan: the lowest plan's rank.
    return rank if rank != ANONYMOUS_RANK else LOWEST_PLAN_RANK
