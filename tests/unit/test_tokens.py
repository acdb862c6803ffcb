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
from jose import jwt

from gateway.edge.authentication import InvalidToken, JwtVerifier, VerifiedTokens
from gateway.edge.jwks import StaticKey
from gateway.settings import GatewaySettings
from services.users.security import TokenIssuer
from services.users.settings import UsersSettings
from shared.contract import ROLE_SCOPES, Identity


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


def rs256_token(private: str, kid: str = "k2", **overrides: object) -> str:
    now = int(time.time())
    claims = {
        "sub": "u1",
        "tid": "t1",
        "scope": " ".join(sorted(ROLE_SCOPES["member"])),
        "plan": "pro",
        "iss": "portico",
        "iat": now,
        "exp": now + 60,
        **overrides,
    }
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})


RS256 = GatewaySettings(jwt_algorithm="RS256")


async def test_rs256_round_trip_and_wrong_key():
    private, public = rsa_pair()
    _, other_public = rsa_pair()
    token = rs256_token(private)
    identity, _ = await JwtVerifier(RS256).verify(token, StaticKey("k2", public))
    assert identity.subject == "u1"
    assert identity.tenant_id == "t1"
    assert identity.scopes == ROLE_SCOPES["member"]
    assert identity.plan == "pro"
    with pytest.raises(InvalidToken):
        await JwtVerifier(RS256).verify(token, StaticKey("k2", other_public))
    with pytest.raises(InvalidToken, match="unknown key"):
        await JwtVerifier(RS256).verify(token, StaticKey("k3", public))


async def test_an_hs256_token_is_refused_by_an_rs256_gateway():
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
        await JwtVerifier(RS256).verify(forged, StaticKey("k2", public))


async def test_hs256_round_trip():
    token = issue(TokenIssuer(UsersSettings(jwt_secret="a" * 40)))
    hs256 = GatewaySettings(jwt_secret="a" * 40)
    assert (await JwtVerifier(hs256).verify(token, StaticKey("portico-1", "a" * 40)))[0].tenant_id == "t1"
    with pytest.raises(InvalidToken):
        await JwtVerifier(hs256).verify(token, StaticKey("portico-1", "b" * 40))


async def test_a_verified_token_is_remembered_until_it_expires_and_the_memory_is_bounded():
    private, public = rsa_pair()
    verifier = JwtVerifier(GatewaySettings(jwt_algorithm="RS256", jwt_cache_size=2, jwt_leeway_seconds=0))
    keys = StaticKey("k2", public)
    tokens = [rs256_token(private, jti=str(n)) for n in range(3)]
    for token in tokens:
        await verifier.verify(token, keys)
    # Remembered: the same token verifies even with no key at all now; the oldest was dropped.
    gone = StaticKey("none", public)
    assert (await verifier.verify(tokens[2], gone))[0].subject == "u1"
    with pytest.raises(InvalidToken):
        await verifier.verify(tokens[0], gone)
    # Nothing is answered from memory past the token's expiry.
    remembered = VerifiedTokens(10)
    remembered.put("token", time.time() - 1, Identity(subject="u1"))
    assert remembered.entry("token") is None
