"""Access tokens: what the users service issues, the gateway verifies, for both algorithms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import InvalidToken, JwtVerifier
from gateway.settings import GatewaySettings
from services.users.security import TokenIssuer
from services.users.settings import UsersSettings
from shared.contract import ROLE_SCOPES


def rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def issue(issuer: TokenIssuer) -> str:
    return issuer.issue(subject="u1", tenant_id="t1", scopes=ROLE_SCOPES["member"], plan="pro", role="member")


def test_rs256_round_trip_and_wrong_key():
    private, public = rsa_pair()
    _, other_public = rsa_pair()
    token = issue(TokenIssuer(UsersSettings(jwt_algorithm="RS256", jwt_private_key=private, jwt_kid="k2")))
    identity = JwtVerifier(GatewaySettings(jwt_algorithm="RS256", jwt_public_key=public, jwt_kid="k2")).verify(token)
    assert identity.subject == "u1"
    assert identity.tenant_id == "t1"
    assert identity.scopes == ROLE_SCOPES["member"]
    assert identity.plan == "pro"
    with pytest.raises(InvalidToken):
        JwtVerifier(GatewaySettings(jwt_algorithm="RS256", jwt_public_key=other_public, jwt_kid="k2")).verify(token)


def test_an_hs256_token_is_refused_by_an_rs256_gateway():
    # The classic confusion attack: an HS256 token "signed" with the public key.
    _, public = rsa_pair()

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k2"}).encode())
    claims = b64(json.dumps({"sub": "u1", "tid": "t1", "iss": "portico", "iat": now, "exp": now + 60}).encode())
    signature = b64(hmac.new(public.encode(), header + b"." + claims, hashlib.sha256).digest())
    forged = (header + b"." + claims + b"." + signature).decode()
    with pytest.raises(InvalidToken):
        JwtVerifier(GatewaySettings(jwt_algorithm="RS256", jwt_public_key=public, jwt_kid="k2")).verify(forged)


def test_hs256_round_trip():
    token = issue(TokenIssuer(UsersSettings(jwt_secret="a" * 40)))
    assert JwtVerifier(GatewaySettings(jwt_secret="a" * 40)).verify(token).tenant_id == "t1"
    with pytest.raises(InvalidToken):
        JwtVerifier(GatewaySettings(jwt_secret="b" * 40)).verify(token)
