"""Sign-up and login as a client sees them through the gateway: the plans sign-up offers, and the
token route saying what it takes."""

from __future__ import annotations

import uuid

PASSWORD = "correct-horse-9"


async def test_sign_up_plans_and_the_token_form_reach_the_client_and_the_reference(gateway):
    email = f"edge-{uuid.uuid4().hex[:12]}@example.com"
    body = {"name": "Big", "plan": "enterprise", "admin_email": email, "admin_password": PASSWORD}
    refused = await gateway.post("/v1/tenants", json=body)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["error_code"] == "PLAN_NOT_SELF_SERVICE"
    assert refused.json()["allowed_plans"] == ["free", "pro"]
    assert (await gateway.post("/v1/tenants", json={**body, "plan": "pro"})).status_code == 201

    as_json = await gateway.post("/v1/auth/token", json={"username": email, "password": PASSWORD})
    assert as_json.status_code == 415, as_json.text
    assert as_json.headers["content-type"] == "application/problem+json"
    assert "application/x-www-form-urlencoded" in as_json.json()["detail"]
    assert (await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})).status_code == 200

    paths = (await gateway.get("/openapi.json")).json()["paths"]
    assert "PLAN_NOT_SELF_SERVICE" in paths["/v1/tenants"]["post"]["responses"]["403"]["x-error-codes"]
    assert "UNSUPPORTED_MEDIA_TYPE" in paths["/v1/auth/token"]["post"]["responses"]["415"]["x-error-codes"]
