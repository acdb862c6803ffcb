"""Portico's load-test journeys, for locust. `make loadtest` runs them headless through
`python -m loadtest`, which bootstraps the tenants first; `locust -f loadtest/locustfile.py` also works
(it then bootstraps them itself) and serves locust's web UI.

Journeys: shoppers (members of a tenant: log in, browse, place orders with an Idempotency-Key and
retries, cancel some, read their dashboard), API clients (an API key: catalogue and orders), merchants
(the admin: products, stock, prices), SSE listeners (the order event stream, resumed with
Last-Event-ID) and new tenants signing up. Every user belongs to a tenant on one of the plans, so
each plan's quota meets its own traffic.

Every request is written to requests.csv with its outcome: ok, rejected (a 4xx the journey can meet
by design, e.g. INSUFFICIENT_STOCK), rate_limited (429), unavailable (a route this gateway does not
serve yet: the router's 404 or 405; the dashboard, order validation and the event stream are in the
public contract but not in every version) or error (5xx, no answer, anything unexpected).
"""

from __future__ import annotations

import csv
import os
import random
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

import gevent
from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser

from loadtest.bootstrap import PASSWORD, PLANS, SELF_SERVICE_PLANS, Tenant, bootstrap, load, save
from loadtest.outcomes import ERROR, JOURNEY_FIELDS, OK, REQUEST_FIELDS, UNAVAILABLE, classify

OUT = Path(os.environ.get("LOADTEST_OUT", "var/loadtest/adhoc"))
THINK = (float(os.environ.get("LOADTEST_THINK_MIN", "0.5")), float(os.environ.get("LOADTEST_THINK_MAX", "2.0")))
# Set by the soak: all users together send at most this many requests per second.
TARGET_RPS = float(os.environ.get("LOADTEST_TARGET_RPS", "0") or 0)
SSE_SECONDS = float(os.environ.get("LOADTEST_SSE_SECONDS", "20"))
# The run's length, counted from the start of the test (locust's --run-time also counts its own
# start-up, which takes seconds on a busy machine).
DURATION = float(os.environ.get("LOADTEST_DURATION", "0") or 0)
REQUEST_TIMEOUT_SECONDS = 30
ORDER_ATTEMPTS = 4
RETRY_CAP_SECONDS = 5.0
RETRIED = {0, 409, 429, 502, 503, 504}

TENANTS: list[Tenant] = []


class Recorder:
    """Appends rows to the run's CSV files. Greenlets take turns, so rows never interleave."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._files = [(out / "requests.csv").open("w", newline=""), (out / "journeys.csv").open("w", newline="")]
        self._requests, self._journeys = (csv.writer(f) for f in self._files)
        self._requests.writerow(REQUEST_FIELDS)
        self._journeys.writerow(JOURNEY_FIELDS)

    def request(self, *row: Any) -> None:
        if not self.closed:  # a request that ends while the run stops is left out
            self._requests.writerow(row)

    def journey(self, kind: str, plan: str, value: float = 1) -> None:
        if not self.closed:
            self._journeys.writerow((f"{time.time():.3f}", kind, plan, value))

    @property
    def closed(self) -> bool:
        return self._files[0].closed

    def close(self) -> None:
        for f in self._files:
            f.close()


RECORDER: Recorder | None = None


class Pacer:
    """Spaces requests out evenly to at most `rps` per second across all users of this process."""

    def __init__(self, rps: float) -> None:
        self.interval = 1 / rps
        self.next = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.interval
        if slot > now:
            gevent.sleep(slot - now)


PACER = Pacer(TARGET_RPS) if TARGET_RPS > 0 else None


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    global RECORDER
    RECORDER = Recorder(OUT)
    tenants_file = Path(os.environ.get("LOADTEST_TENANTS", OUT / "tenants.json"))
    if not tenants_file.exists():
        assert environment.host, "locust needs --host"
        save(bootstrap(environment.host), tenants_file)
    TENANTS[:] = load(tenants_file)
    if DURATION:
        gevent.spawn(_quit_after, environment, DURATION)


def _quit_after(environment: Environment, seconds: float) -> None:
    # Counted on the monotonic clock in short sleeps: gevent's timers run on the event loop's cached
    # time, which lags by however long the loop was blocked.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        gevent.sleep(min(left, 1.0))
    assert environment.runner is not None
    environment.runner.quit()


@events.test_stop.add_listener
def _stop(**_: Any) -> None:
    if RECORDER is not None:
        RECORDER.close()


def retry_delay(response: Any, attempt: int) -> float:
    header = response.headers.get("Retry-After", "") if response.status_code else ""
    base = float(header) if header.isdigit() else 0.2 * 2**attempt
    return min(base, RETRY_CAP_SECONDS) * random.uniform(0.8, 1.2)


class PorticoUser(HttpUser):
    abstract = True
    wait_time = between(*THINK)
    plan_weights: ClassVar[dict[str, int]] = {"free": 2, "pro": 3, "enterprise": 2}

    tenant: Tenant
    auth: dict[str, str]

    def pick_tenant(self) -> Tenant:
        plans = [p for p in PLANS if any(t.plan == p for t in TENANTS)]
        plan = random.choices(plans, weights=[self.plan_weights[p] for p in plans])[0]
        return random.choice([t for t in TENANTS if t.plan == plan])

    def call(
        self,
        method: str,
        url: str,
        name: str,
        expected: Collection[int] = (200,),
        rejected: Collection[str] = (),
        pending: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One request, timed and recorded with its outcome; the response is returned."""
        if PACER is not None:
            PACER.wait()
        headers = {**self.auth, **kwargs.pop("headers", {})}
        # A stalled request ends as an error in the report instead of vanishing when the run stops.
        kwargs.setdefault("timeout", (5, REQUEST_TIMEOUT_SECONDS))
        started = time.time()
        clock = time.perf_counter()
        with self.client.request(method, url, name=name, headers=headers, catch_response=True, **kwargs) as response:
            latency_ms = (time.perf_counter() - clock) * 1000
            body = None
            # A stream's body is the stream; anything else (a problem+json) is read.
            streaming = kwargs.get("stream") and response.status_code == 200
            if "json" in response.headers.get("content-type", "") and not streaming:
                try:
                    body = response.json()
                except ValueError:
                    body = None
            outcome = classify(response.status_code, body, expected, rejected, pending)
            if outcome == ERROR:
                response.failure(f"{response.status_code} {getattr(response, 'error', '') or ''}".strip())
            else:
                response.success()
        code = body.get("error_code", "") if isinstance(body, dict) else ""
        assert RECORDER is not None
        RECORDER.request(
            f"{started:.3f}", method, name, response.status_code, f"{latency_ms:.2f}", self.tenant.plan, outcome, code
        )
        response.outcome = outcome
        response.body = body
        return response

    def journey(self, kind: str, value: float = 1) -> None:
        assert RECORDER is not None
        RECORDER.journey(kind, self.tenant.plan, value)


class MemberUser(PorticoUser):
    """A person of a tenant, with an access token from the password grant."""

    abstract = True
    email: str

    def on_start(self) -> None:
        self.tenant = self.pick_tenant()
        self.auth = {}
        self.login()

    def login(self) -> None:
        for attempt in range(6):
            response = self.call(
                "POST",
                "/v1/auth/token",
                "/v1/auth/token",
                data={"username": self.email_for_login(), "password": PASSWORD},
            )
            if response.outcome == OK:
                self.auth = {"Authorization": f"Bearer {response.body['access_token']}"}
                return
            gevent.sleep(retry_delay(response, attempt))
        raise StopUser  # never logged in: this user leaves the run

    def email_for_login(self) -> str:
        raise NotImplementedError


class Shopper(MemberUser):
    weight = 6

    def email_for_login(self) -> str:
        return random.choice(self.tenant.members)

    def on_start(self) -> None:
        super().on_start()
        self.orders: list[str] = []
        me = self.call("GET", "/v1/users/me", "/v1/users/me")
        self.user_id = me.body["id"] if me.outcome == OK else None

    @task(5)
    def browse(self) -> None:
        page = self.call("GET", "/v1/products?limit=20", "/v1/products")
        if page.outcome == OK and page.body["items"]:
            product = random.choice(page.body["items"])["id"]
            self.call("GET", f"/v1/products/{product}", "/v1/products/{product_id}")

    @task(3)
    def place_order(self) -> None:
        products = random.sample(self.tenant.products, k=random.randint(1, 3))
        body = {"items": [{"product_id": p, "quantity": random.randint(1, 2)} for p in products]}
        order = place_with_retries(self, body)
        if order is None:
            return
        self.orders = [*self.orders[-19:], order]
        if random.random() < 0.4:
            self.call(
                "POST",
                f"/v1/orders/{order}/cancel",
                "/v1/orders/{order_id}/cancel",
                rejected=("ORDER_ALREADY_CANCELLED",),
            )

    @task(2)
    def my_orders(self) -> None:
        self.call("GET", "/v1/orders?limit=10", "/v1/orders")
        if self.orders:
            self.call("GET", f"/v1/orders/{random.choice(self.orders)}", "/v1/orders/{order_id}")

    @task(1)
    def dashboard(self) -> None:
        if self.user_id:
            self.call("GET", f"/v1/users/{self.user_id}/dashboard", "/v1/users/{user_id}/dashboard", pending=True)

    @task(1)
    def validate_basket(self) -> None:
        products = random.sample(self.tenant.products, k=random.randint(1, 3))
        body = {"items": [{"product_id": p, "quantity": 1} for p in products]}
        self.call("POST", "/v1/orders/validate", "/v1/orders/validate", json=body, pending=True)

    @task(1)
    def me(self) -> None:
        self.call("GET", "/v1/users/me", "/v1/users/me")


def place_with_retries(user: PorticoUser, body: dict[str, Any]) -> str | None:
    """POST /v1/orders as a careful client does: one Idempotency-Key for every attempt, retried on
    429, 409 (the first attempt still in flight), 5xx and lost answers. Now and then the answer is
    taken as lost and the request sent again, which must replay the same order."""
    key = f"lt-{uuid.uuid4()}"
    headers = {"Idempotency-Key": key}
    for attempt in range(ORDER_ATTEMPTS):
        response = user.call(
            "POST",
            "/v1/orders",
            "/v1/orders",
            expected=(201,),
            rejected=("INSUFFICIENT_STOCK", "CREDIT_LIMIT_EXCEEDED", "IDEMPOTENCY_KEY_IN_USE"),
            json=body,
            headers=headers,
        )
        if response.status_code == 201:
            order: str = response.body["id"]
            if attempt:
                user.journey("orders_placed_after_a_retry")
            if random.random() < 0.05:
                again = user.call("POST", "/v1/orders", "/v1/orders", expected=(201,), json=body, headers=headers)
                if again.status_code == 201:
                    replayed = again.headers.get("Idempotent-Replayed") == "true" and again.body["id"] == order
                    user.journey("order_answers_replayed" if replayed else "order_resends_not_replayed")
            return order
        if response.status_code not in RETRIED:
            return None
        user.journey("order_retries")
        gevent.sleep(retry_delay(response, attempt))
    user.journey("orders_given_up")
    return None


class ApiClient(PorticoUser):
    """A tenant's integration, with an API key (products:read, orders:read, orders:write). Programs
    poll faster than people click: on the free plan they are what meets the quota."""

    weight = 3
    wait_time = between(THINK[0] / 5, THINK[1] / 5)

    def on_start(self) -> None:
        self.tenant = self.pick_tenant()
        self.auth = {"X-API-Key": self.tenant.api_key}

    @task(4)
    def catalogue(self) -> None:
        self.call("GET", "/v1/products?limit=50", "/v1/products")

    @task(2)
    def product(self) -> None:
        product = random.choice(self.tenant.products)
        self.call("GET", f"/v1/products/{product}", "/v1/products/{product_id}")

    @task(2)
    def orders(self) -> None:
        self.call("GET", "/v1/orders?limit=50", "/v1/orders")

    @task(1)
    def order(self) -> None:
        product = random.choice(self.tenant.products)
        place_with_retries(self, {"items": [{"product_id": product, "quantity": 1}]})


class Merchant(MemberUser):
    """The tenant's admin: new products, stock, prices."""

    weight = 1

    def email_for_login(self) -> str:
        return self.tenant.admin_email

    @task(3)
    def restock(self) -> None:
        product = random.choice(self.tenant.products)
        self.call(
            "POST",
            f"/v1/products/{product}/stock-adjustments",
            "/v1/products/{product_id}/stock-adjustments",
            expected=(201,),
            rejected=("STOCK_LIMIT_EXCEEDED",),
            json={"delta": random.randint(1, 50), "reason": "load test restock"},
        )

    @task(2)
    def reprice(self) -> None:
        product = random.choice(self.tenant.products)
        self.call(
            "PATCH",
            f"/v1/products/{product}",
            "/v1/products/{product_id}",
            json={"price_cents": random.randint(100, 2_000)},
        )

    @task(1)
    def new_product(self) -> None:
        sku = f"LT-{uuid.uuid4().hex[:12]}"
        product = {"sku": sku, "name": "Load test product", "price_cents": 990, "stock": 1000}
        self.call("POST", "/v1/products", "/v1/products", expected=(201,), rejected=("SKU_TAKEN",), json=product)

    @task(1)
    def keys(self) -> None:
        self.call("GET", "/v1/api-keys", "/v1/api-keys")


class SseListener(MemberUser):
    """Follows the tenant's order events for a while, then reconnects and resumes with Last-Event-ID."""

    weight = 1
    wait_time = between(1, 3)

    def email_for_login(self) -> str:
        return random.choice(self.tenant.members)

    def on_start(self) -> None:
        super().on_start()
        self.last_event_id: str | None = None

    @task
    def listen(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        response = self.call(
            "GET",
            "/v1/events",
            "/v1/events",
            pending=True,
            headers=headers,
            stream=True,
            # Connect, then the longest silence allowed: longer than the server's heartbeat.
            timeout=(5, 30),
        )
        if response.outcome == UNAVAILABLE:
            response.close()
            gevent.sleep(10)  # nothing to listen to on this gateway; no point in asking again at once
            return
        if response.status_code != 200:
            response.close()
            return
        events_seen = 0
        deadline = time.monotonic() + SSE_SECONDS
        try:
            for line in response.iter_lines():
                if line.startswith(b"id:"):
                    self.last_event_id = line[3:].strip().decode()
                elif line.startswith(b"event:"):
                    events_seen += 1
                if time.monotonic() > deadline:
                    break
        except Exception:
            self.journey("sse_streams_cut")
        finally:
            response.close()
        self.journey("sse_streams")
        self.journey("sse_events_received", events_seen)


class Onboarding(PorticoUser):
    """A new tenant signing up now and then: tenant, login, first product, an API key."""

    fixed_count = 1
    wait_time = between(8, 15)

    def on_start(self) -> None:
        self.tenant = Tenant("", "", random.choice(PLANS), "")
        self.auth = {}

    @task
    def sign_up(self) -> None:
        # Sign-up is self-service: only the plans it offers (others are an operator's to give).
        self.tenant.plan = random.choice(SELF_SERVICE_PLANS)
        self.auth = {}
        email = f"owner-{uuid.uuid4().hex[:12]}@load.example.com"
        body = {"name": "Onboarding load", "plan": self.tenant.plan, "admin_email": email, "admin_password": PASSWORD}
        created = self.call("POST", "/v1/tenants", "/v1/tenants", expected=(201,), json=body)
        if created.outcome != OK:
            return
        login = self.call("POST", "/v1/auth/token", "/v1/auth/token", data={"username": email, "password": PASSWORD})
        if login.outcome != OK:
            return
        self.auth = {"Authorization": f"Bearer {login.body['access_token']}"}
        product = {"sku": "FIRST-1", "name": "First product", "price_cents": 500, "stock": 10}
        self.call("POST", "/v1/products", "/v1/products", expected=(201,), json=product)
        key = {"name": "first", "scopes": ["products:read"]}
        self.call("POST", "/v1/api-keys", "/v1/api-keys", expected=(201,), json=key)
        self.journey("tenants_signed_up")
