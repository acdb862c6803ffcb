"""Products and their stock: forwarded to the inventory service."""

from __future__ import annotations

from gateway.edge.access import readers_and_writers
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from services.inventory.errors import InsufficientStock, ProductNotFound, SkuTaken, StockLimitExceeded
from services.inventory.schemas import (
    ProductCreate,
    ProductOut,
    ProductUpdate,
    StockAdjustmentCreate,
    StockAdjustmentOut,
)
from shared.pagination import Page

router = ForwardRouter("inventory", prefix="/v1", tags=["products"])

Reader, Writer = readers_and_writers("products")
ADJUSTMENTS = "/products/{product_id}/stock-adjustments"

router.add(
    Forward(
        "GET",
        "/products",
        Reader,
        "list_products",
        "The tenant's products, newest first; with ids=a,b,c only those (up to 100), in that order",
        query={**PAGE_QUERY, "ids": (str | None, None)},
        answer=Page[ProductOut],
    ),
    Forward(
        "POST",
        "/products",
        Writer,
        "create_product",
        "Create a product (sku unique per tenant, price in cents)",
        status_code=201,
        body=ProductCreate,
        answer=ProductOut,
        errors=[SkuTaken],
    ),
    Forward(
        "GET",
        "/products/{product_id}",
        Reader,
        "get_product",
        "A product of the tenant",
        answer=ProductOut,
        errors=[ProductNotFound],
    ),
    Forward(
        "PATCH",
        "/products/{product_id}",
        Writer,
        "update_product",
        "Change a product's sku, name or price",
        body=ProductUpdate,
        answer=ProductOut,
        errors=[ProductNotFound, SkuTaken],
    ),
    Forward(
        "POST",
        ADJUSTMENTS,
        Writer,
        "adjust_stock",
        "Add or remove stock (a non-zero delta and a reason); stock never goes below zero",
        status_code=201,
        body=StockAdjustmentCreate,
        answer=StockAdjustmentOut,
        errors=[ProductNotFound, InsufficientStock, StockLimitExceeded],
    ),
    Forward(
        "GET",
        ADJUSTMENTS,
        Reader,
        "list_adjustments",
        "A product's stock adjustments, newest first",
        query=PAGE_QUERY,
        answer=Page[StockAdjustmentOut],
        errors=[ProductNotFound],
    ),
)
