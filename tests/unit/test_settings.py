from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from gateway.app import create_app
from gateway.edge.authentication import key_source
from gateway.edge.jwks import JwksKeys, StaticKey
from gateway.settings import GatewaySettings
from services.users.settings import UsersSettings
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner

STRONG = "s" * 40


def test_development_accepts_the_default_secrets():
    assert GatewaySettings().environment == "development"


@pytest.mark.parametrize("environment", ["test", "production"])
def test_weak_or_default_secrets_are_refused_outside_development(environment):
    with pytest.raises(ValidationError, match="internal_token_secret"):
        GatewaySettings(environment=environment, jwt_secret=STRONG)
    with pytest.raises(ValidationError, match="jwt_secret"):
        UsersSettings(environment=environment, internal_token_secret=STRONG, jwt_secret="short")
    UsersSettings(environment=environment, internal_token_secret=STRONG, jwt_secret=STRONG)


def test_each_process_reads_its_own_prefix(monkeypatch):
    monkeypatch.setenv("USERS_PORT", "9101")
    monkeypatch.setenv("GATEWAY_PORT", "9100")
    assert UsersSettings().port == 9101
    assert GatewaySettings().port == 9100


def test_production_turns_docs_and_openapi_off():
    settings = GatewaySettings(environment="production", internal_token_secret=STRONG, jwt_secret=STRONG)
    paths = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert "/docs" not in paths
    assert "/openapi.json" not in paths
    dev_paths = {getattr(route, "path", None) for route in create_app(GatewaySettings()).routes}
    assert {"/docs", "/openapi.json"} <= dev_paths


async def test_rs256_takes_a_key_from_the_settings_or_else_the_jwks():
    async with httpx.AsyncClient() as http:
        users = ServiceClient("users", "http://127.0.0.1:1", http, IdentitySigner("s" * 40))
        assert isinstance(key_source(GatewaySettings(jwt_algorithm="RS256"), users), JwksKeys)
        pinned = GatewaySettings(jwt_algorithm="RS256", jwt_public_key="PEM")
        assert isinstance(key_source(pinned, users), StaticKey)
        assert isinstance(key_source(GatewaySettings(), users), StaticKey)
