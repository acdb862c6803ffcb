"""A delivery and its replay through the gateway: plan gate, scopes, tenants. The shared stack runs no
delivery worker (its endpoints point at public addresses), so deliveries stay pending here."""

from __future__ import annotations

import uuid

from tests.e2e.test_webhooks_flow import PUBLIC_URL, Shop, member_of, problem, signup, wait_for_deliveries


async def test_a_delivery_and_its_replay_through_the_gateway(gateway):
    shop = await Shop.open(gateway)
    admin = shop.caller
    created = await admin.request(
        "POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]}
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["status"] == "active"
    await shop.order()
    delivery = (await wait_for_deliveries(admin, {"e": endpoint}, {"e": 1}))["e"][0]
    assert delivery["webhook_id"].startswith("msg_")

    shown = await admin.request("GET", f"/v1/webhooks/deliveries/{delivery['id']}")
    assert shown.status_code == 200, shown.text
    assert (shown.json()["status"], shown.json()["attempt_log"]) == ("pending", [])
    replayed = await admin.request("POST", f"/v1/webhooks/deliveries/{delivery['id']}/replay")
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["webhook_id"] == delivery["webhook_id"]

    member = await member_of(admin)
    assert (await member.request("GET", f"/v1/webhooks/deliveries/{delivery['id']}")).status_code == 200
    refused = problem(await member.request("POST", f"/v1/webhooks/deliveries/{delivery['id']}/replay"), 403)
    assert refused["required_scope"] == "webhooks:write"

    stranger = await signup(gateway)
    for method, suffix in (("GET", ""), ("POST", "/replay")):
        path = f"/v1/webhooks/deliveries/{delivery['id']}{suffix}"
        problem(await stranger.request(method, path), 404, "WEBHOOK_DELIVERY_NOT_FOUND")
        problem(await admin.request(method, f"/v1/webhooks/deliveries/{uuid.uuid4()}{suffix}"), 404)
        problem(await admin.request(method, f"/v1/webhooks/deliveries/not a valid id{suffix}"), 422)
    free = await signup(gateway, plan="free")
    for method, suffix in (("GET", ""), ("POST", "/replay")):
        problem(await free.request(method, f"/v1/webhooks/deliveries/{delivery['id']}{suffix}"), 402)
