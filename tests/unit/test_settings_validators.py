"""Every validator of every process's settings: the value it refuses, with the message that says what
to write instead, and the nearest value it accepts. A validator added without a case here fails
`test_every_validator_has_a_case`."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings, Quota
from services.inventory.settings import InventorySettings
from services.orders.settings import OrdersSettings
from services.users.settings import UsersSettings
from services.webhooks.settings import WebhooksSettings

SETTINGS: tuple[type[BaseSettings], ...] = (
    GatewaySettings,
    UsersSettings,
    OrdersSettings,
    InventorySettings,
    WebhooksSettings,
)
STRONG = "s" * 40

# (settings class, validator, refused values, part of the message, accepted neighbour values)
CASES: list[tuple[type[BaseSettings], str, dict[str, Any], str, dict[str, Any]]] = [
    (
        OrdersSettings,
        "_client_idles_out_first",
        {"http_keepalive_expiry_seconds": 30, "server_keep_alive_seconds": 30},
        "below server_keep_alive_seconds",
        {"http_keepalive_expiry_seconds": 29.5, "server_keep_alive_seconds": 30},
    ),
    (
        InventorySettings,
        "_server_limits",
        {"max_header_line_bytes": 2048, "max_header_bytes": 1024},
        "must not exceed max_header_bytes",
        {"max_header_line_bytes": 1024, "max_header_bytes": 1024},
    ),
    (
        InventorySettings,
        "_server_limits",
        {"metrics_allowed_networks": ["10.0.0.0/33"]},
        "10.0.0.0/33",
        {"metrics_allowed_networks": ["10.0.0.0/32"]},
    ),
    (
        WebhooksSettings,
        "_refuse_weak_secrets",
        {"environment": "test", "internal_token_secret": "s" * 31},
        "internal_token_secret",
        {"environment": "test", "internal_token_secret": "s" * 32},
    ),
    (
        GatewaySettings,
        "_refuse_weak_secrets",
        {"environment": "production", "internal_token_secret": STRONG, "jwt_secret": "changeme"},
        "jwt_secret",
        {"environment": "production", "internal_token_secret": STRONG, "jwt_secret": STRONG},
    ),
    (
        GatewaySettings,
        "_key_for_algorithm",
        {"jwt_algorithm": "HS256", "jwt_secret": None},
        "GATEWAY_JWT_SECRET is required",
        {"jwt_algorithm": "HS256", "jwt_secret": STRONG},
    ),
    (
        GatewaySettings,
        "_edge",
        {"idempotency_lock_seconds": 10, "http_timeout_seconds": 10},
        "LOCK_SECONDS must exceed",
        {"idempotency_lock_seconds": 10.5, "http_timeout_seconds": 10},
    ),
    (
        GatewaySettings,
        "_edge",
        {"rate_limit_routes": {"post /v1/orders": "10/60s"}},
        "must read 'METHOD /path/template'",
        {"rate_limit_routes": {"POST /v1/orders": "10/60s"}},
    ),
    (
        GatewaySettings,
        "_edge",
        {"rate_limit_routes": {"POST v1/orders": "10/60s"}},
        "must read 'METHOD /path/template'",
        {"rate_limit_routes": {"POST /v1/orders/{order_id}": "10/60s"}},
    ),
    (
        GatewaySettings,
        "_edge",
        {"trusted_proxies": ["10.0.0.300"]},
        "10.0.0.300",
        {"trusted_proxies": ["10.0.0.0/8", "::1"]},
    ),
    (
        GatewaySettings,
        "_edge",
        {"cors_allow_origins": ["*"], "cors_allow_credentials": True},
        "CORS credentials",
        {"cors_allow_origins": ["https://app.example.com"], "cors_allow_credentials": True},
    ),
    (
        UsersSettings,
        "_key_for_algorithm",
        {"jwt_algorithm": "HS256", "jwt_secret": None},
        "USERS_JWT_SECRET is required",
        {"jwt_algorithm": "HS256", "jwt_secret": STRONG},
    ),
    (
        OrdersSettings,
        "_fleets",
        {"upstream_dns_min_ttl_seconds": 31, "upstream_dns_max_ttl_seconds": 30},
        "upstream_dns_min_ttl_seconds must not exceed",
        {"upstream_dns_min_ttl_seconds": 30, "upstream_dns_max_ttl_seconds": 30},
    ),
    (
        GatewaySettings,
        "_fleets",
        {"upstream_ejection_seconds": 40, "upstream_ejection_max_seconds": 30},
        "upstream_ejection_seconds must not exceed",
        {"upstream_ejection_seconds": 30, "upstream_ejection_max_seconds": 30},
    ),
    (
        GatewaySettings,
        "_fleets",
        {"upstream_dns_servers": ["10.0.0.10:99999"]},
        "10.0.0.10:99999",
        {"upstream_dns_servers": ["10.0.0.10:5353", "10.0.0.11", "[fd00::1]:53"]},
    ),
    (
        WebhooksSettings,
        "_lease_outlives_an_attempt",
        {"delivery_timeout_seconds": 10, "delivery_lease_seconds": 14.9},
        "at least delivery_timeout_seconds + 5 (15)",
        {"delivery_timeout_seconds": 10, "delivery_lease_seconds": 15},
    ),
    (
        OrdersSettings,
        "_admission_limits",
        {"admission_min_limit": 10, "admission_initial_limit": 5},
        "admission_min_limit <= initial <= admission_max_limit",
        {"admission_min_limit": 5, "admission_initial_limit": 5, "admission_max_limit": 5},
    ),
    (
        GatewaySettings,
        "_plan_shares",
        {"admission_plan_shares": {"free": 0.5, "gold": 1.0}},
        "'gold' is not one of anonymous, free, pro, enterprise",
        {"admission_plan_shares": {"anonymous": 0.25, "free": 0.25, "enterprise": 1.0}},
    ),
    (
        GatewaySettings,
        "_plan_shares",
        {"admission_plan_shares": {"free": 0}},
        "the share of free must be in (0, 1]",
        {"admission_plan_shares": {"free": 1}},
    ),
    (
        GatewaySettings,
        "_plan_shares",
        {"admission_plan_shares": {"pro": 0.4}},
        "a plan's share may not be below a lower plan's (anonymous 1, free 1, pro 0.4, enterprise 1",
        {"admission_plan_shares": {"anonymous": 0.1, "free": 0.2, "pro": 0.4}},
    ),
]


@pytest.mark.parametrize(
    ("settings_cls", "validator", "refused", "message", "accepted"),
    CASES,
    ids=[f"{case[0].__name__}.{case[1]}-{index}" for index, case in enumerate(CASES)],
)
def test_each_validator_refuses_and_accepts(settings_cls, validator, refused, message, accepted):
    with pytest.raises(ValidationError, match=re.escape(message)):
        settings_cls(**refused)
    settings = settings_cls(**accepted)
    for name, value in accepted.items():
        if name in ("jwt_secret", "internal_token_secret", "jwt_private_key"):
            continue
        if name == "rate_limit_routes":
            value = {route: Quota(10, 60) for route in value}
        assert getattr(settings, name) == value, name


def test_every_validator_has_a_case():
    covered = {(cls, name) for cls, name, *_ in CASES}
    for cls in SETTINGS:
        for name in cls.__pydantic_decorators__.model_validators:
            owners = [c for c in SETTINGS if name in c.__pydantic_decorators__.model_validators]
            assert any((owner, name) in covered for owner in owners), f"{cls.__name__}.{name} has no case"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("100 per minute", "is not a quota; write it as <requests>/<seconds>s"),
        ("0/60s", "at least 1 request in a window of at least 1 second"),
        ("10/0s", "at least 1 request in a window of at least 1 second"),
    ],
)
def test_quotas_are_refused_unless_they_allow_a_request(value, message):
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(rate_limit_pro=value)


@pytest.mark.parametrize(("written", "quota"), [("100/60s", Quota(100, 60)), (" 5 / 1 ", Quota(5, 1))])
def test_quotas_are_read_as_written(written, quota):
    assert GatewaySettings(rate_limit_pro=written).rate_limit_pro == quota


def test_retry_schedules_are_comma_separated_seconds(monkeypatch):
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE_SECONDS", "5, 300,1800")
    assert WebhooksSettings().retry_schedule_seconds == (5, 300, 1800)
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE_SECONDS", "5,,300")
    with pytest.raises(ValidationError, match="comma-separated seconds"):
        WebhooksSettings()
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE_SECONDS", "5,-1")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        WebhooksSettings()


def test_lists_from_the_environment_are_json_or_comma_separated(monkeypatch):
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", '["10.0.0.1", "10.0.0.2"]')
    assert GatewaySettings().trusted_proxies == ["10.0.0.1", "10.0.0.2"]
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", " 10.0.0.1 ,, 10.0.0.2 ")
    assert GatewaySettings().trusted_proxies == ["10.0.0.1", "10.0.0.2"]
