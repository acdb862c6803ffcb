"""What the gateway and the services must agree on, written once and imported by both sides, one
module a topic:

- `processes`: the processes, their modules and default ports, the workers beside a service, the
  probe and metrics paths every one serves, and the largest WebSocket message their servers read;
- `access`: scopes, what each role holds, and the plans;
- `identity`: the identity a request is for, as the claims of the internal identity token and of
  access tokens;
- `apikeys`: the shape of an API key;
- `idempotency`: Idempotency-Key rules and the errors they answer with;
- `resources`: the pattern of resource ids, the line items an order and its reservation carry, and
  the lines as the inventory service reserved them (`ReservedLine`);
- `credit`: the bound of a user's credit limit, and the error an order past the limit answers;
- `answers`: what an answer that holds a secret says about caching, and whether an aggregate is whole.

Everything is importable from `shared.contract` itself. Plumbing that enforces these (token signing,
the edge stages, the database) stays in the modules that use it; only the agreement is here.
"""

from shared.contract.access import (
    ALL_SCOPES as ALL_SCOPES,
)
from shared.contract.access import (
    DEFAULT_PLAN as DEFAULT_PLAN,
)
from shared.contract.access import (
    EVENTS_READ as EVENTS_READ,
)
from shared.contract.access import (
    EVENTS_WRITE as EVENTS_WRITE,
)
from shared.contract.access import (
    ORDERS_READ as ORDERS_READ,
)
from shared.contract.access import (
    ORDERS_WRITE as ORDERS_WRITE,
)
from shared.contract.access import (
    PLANS as PLANS,
)
from shared.contract.access import (
    PRODUCTS_READ as PRODUCTS_READ,
)
from shared.contract.access import (
    PRODUCTS_WRITE as PRODUCTS_WRITE,
)
from shared.contract.access import (
    ROLE_SCOPES as ROLE_SCOPES,
)
from shared.contract.access import (
    USAGE_READ as USAGE_READ,
)
from shared.contract.access import (
    USERS_READ as USERS_READ,
)
from shared.contract.access import (
    USERS_WRITE as USERS_WRITE,
)
from shared.contract.access import (
    WEBHOOKS_READ as WEBHOOKS_READ,
)
from shared.contract.access import (
    WEBHOOKS_WRITE as WEBHOOKS_WRITE,
)
from shared.contract.access import (
    Plan as Plan,
)
from shared.contract.access import (
    Role as Role,
)
from shared.contract.answers import (
    AGGREGATE_COMPLETE_HEADER as AGGREGATE_COMPLETE_HEADER,
)
from shared.contract.answers import (
    CACHE_CONTROL as CACHE_CONTROL,
)
from shared.contract.answers import (
    NO_STORE as NO_STORE,
)
from shared.contract.apikeys import (
    API_KEY_BYTES as API_KEY_BYTES,
)
from shared.contract.apikeys import (
    API_KEY_PREFIX as API_KEY_PREFIX,
)
from shared.contract.apikeys import (
    API_KEY_RE as API_KEY_RE,
)
from shared.contract.apikeys import (
    KEY_HASH_RE as KEY_HASH_RE,
)
from shared.contract.apikeys import (
    KEY_SUBJECT_PREFIX as KEY_SUBJECT_PREFIX,
)
from shared.contract.apikeys import (
    hash_api_key as hash_api_key,
)
from shared.contract.apikeys import (
    is_well_formed as is_well_formed,
)
from shared.contract.apikeys import (
    key_id_of as key_id_of,
)
from shared.contract.apikeys import (
    key_subject as key_subject,
)
from shared.contract.apikeys import (
    new_api_key as new_api_key,
)
from shared.contract.credit import (
    MAX_CREDIT_LIMIT_CENTS as MAX_CREDIT_LIMIT_CENTS,
)
from shared.contract.credit import (
    CreditLimitExceeded as CreditLimitExceeded,
)
from shared.contract.idempotency import (
    IDEMPOTENCY_HEADER as IDEMPOTENCY_HEADER,
)
from shared.contract.idempotency import (
    IDEMPOTENCY_KEY_PATTERN as IDEMPOTENCY_KEY_PATTERN,
)
from shared.contract.idempotency import (
    IDEMPOTENT_METHODS as IDEMPOTENT_METHODS,
)
from shared.contract.idempotency import (
    IDEMPOTENT_REPLAYED_HEADER as IDEMPOTENT_REPLAYED_HEADER,
)
from shared.contract.idempotency import (
    IdempotencyKeyInUse as IdempotencyKeyInUse,
)
from shared.contract.idempotency import (
    IdempotencyKeyReused as IdempotencyKeyReused,
)
from shared.contract.idempotency import (
    IdempotentResponseNotStored as IdempotentResponseNotStored,
)
from shared.contract.idempotency import (
    InvalidIdempotencyKey as InvalidIdempotencyKey,
)
from shared.contract.idempotency import (
    checked_idempotency_key as checked_idempotency_key,
)
from shared.contract.identity import (
    ANONYMOUS as ANONYMOUS,
)
from shared.contract.identity import (
    IDENTITY_ALGORITHM as IDENTITY_ALGORITHM,
)
from shared.contract.identity import (
    IDENTITY_CHALLENGE as IDENTITY_CHALLENGE,
)
from shared.contract.identity import (
    IDENTITY_HEADER as IDENTITY_HEADER,
)
from shared.contract.identity import (
    IDENTITY_ISSUER as IDENTITY_ISSUER,
)
from shared.contract.identity import (
    IDENTITY_LEEWAY_SECONDS as IDENTITY_LEEWAY_SECONDS,
)
from shared.contract.identity import (
    JWKS_PATH as JWKS_PATH,
)
from shared.contract.identity import (
    SERVICE_SUBJECT_PREFIX as SERVICE_SUBJECT_PREFIX,
)
from shared.contract.identity import (
    AuthenticationRequired as AuthenticationRequired,
)
from shared.contract.identity import (
    Identity as Identity,
)
from shared.contract.identity import (
    InsufficientScope as InsufficientScope,
)
from shared.contract.identity import (
    TenantIdentity as TenantIdentity,
)
from shared.contract.identity import (
    identity_claims as identity_claims,
)
from shared.contract.identity import (
    identity_from_claims as identity_from_claims,
)
from shared.contract.identity import (
    service_subject as service_subject,
)
from shared.contract.processes import (
    LIVE_PATH as LIVE_PATH,
)
from shared.contract.processes import (
    METRICS_PATH as METRICS_PATH,
)
from shared.contract.processes import (
    PROBE_PATHS as PROBE_PATHS,
)
from shared.contract.processes import (
    PROCESSES as PROCESSES,
)
from shared.contract.processes import (
    READY_PATH as READY_PATH,
)
from shared.contract.processes import (
    SERVICES as SERVICES,
)
from shared.contract.processes import (
    WEBHOOKS_WORKER as WEBHOOKS_WORKER,
)
from shared.contract.processes import (
    WEBSOCKET_MAX_MESSAGE_BYTES as WEBSOCKET_MAX_MESSAGE_BYTES,
)
from shared.contract.processes import (
    WORKERS as WORKERS,
)
from shared.contract.processes import (
    Process as Process,
)
from shared.contract.processes import (
    Worker as Worker,
)
from shared.contract.resources import (
    MAX_ITEMS as MAX_ITEMS,
)
from shared.contract.resources import (
    MAX_QUANTITY as MAX_QUANTITY,
)
from shared.contract.resources import (
    RESOURCE_ID_PATTERN as RESOURCE_ID_PATTERN,
)
from shared.contract.resources import (
    LineItem as LineItem,
)
from shared.contract.resources import (
    LineItems as LineItems,
)
from shared.contract.resources import (
    ReservedLine as ReservedLine,
)
from shared.contract.resources import (
    ResourceIdField as ResourceIdField,
)
from shared.contract.resources import (
    ResourceIdPath as ResourceIdPath,
)
