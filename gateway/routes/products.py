"""Products and their stock: forwarded to the inventory service."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import readers_and_writers
from gateway.routes.forward import PAGE_QUERY, Forward, add_forwards

router = APIRouter(prefix="/v1", tags=["products"])

Reader, Writer = readers_and_writers("products")
ADJUSTMENTS = "/products/{product_id}/stock-adjustments"

add_forwards(
    router,
    "inventory",
    [
        Forward(
            "GET",
            "/products",
            Reader,
            "list_products",
            "The tenant's products, newest first; with ids=a,b,c only those (up to 100), in that order",
            query={**PAGE_QUERY, "ids": (str | None, None)},
        ),
        Forward(
            "POST",
            "/products",
            Writer,
            "create_product",
            "Create a product (sku unique per tenant, price in cents)",
            status_code=201,
        ),
        Forward("GET", "/products/{product_id}", Reader, "get_product", "A product of the tenant"),
        Forward("PATCH", "/products/{product_id}", Writer, "update_product", "Change a product's sku, name or price"),
        Forward(
            "POST",
            ADJUSTMENTS,
            Writer,
            "adjust_stock",
            "Add or remove stock (a non-zero delta and a reason); stock never goes below zero",
            status_code=201,
        ),
        Forward(
            "GET",
            ADJUSTMENTS,
            Reader,
            "list_adjustments",
            "A product's stock adjustments, newest first",
            query=PAGE_QUERY,
        ),
    ],
)
