"""Products and their stock: forwarded to the inventory service."""

from __future__ import annotations

from gateway.edge.access import Access
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from services.inventory.errors import (
    ADJUST_STOCK_ERRORS,
    CREATE_PRODUCT_ERRORS,
    GET_PRODUCT_ERRORS,
    LIST_ADJUSTMENTS_ERRORS,
    LIST_PRODUCTS_ERRORS,
    UPDATE_PRODUCT_ERRORS,
)
from services.inventory.schemas import (
    ProductCreate,
    ProductOut,
    ProductUpdate,
    StockAdjustmentCreate,
    StockAdjustmentOut,
)
from shared.contract import PRODUCTS_READ, PRODUCTS_WRITE
from shared.pagination import Page

router = ForwardRouter("inventory", prefix="/v1", tags=["products"])

Reader, Writer = Access(scope=PRODUCTS_READ), Access(scope=PRODUCTS_WRITE)
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
        errors=LIST_PRODUCTS_ERRORS,
        description=(
            "The tenant's products, newest first, a page at a time (`limit`, and `cursor` from the previous "
            "page's `next_cursor`). With `ids` (comma-separated, at most 100) only those products, in that "
            "order, without paging; an unknown id is left out."
        ),
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
        errors=CREATE_PRODUCT_ERRORS,
        description=(
            "Adds a product to the tenant's catalogue with its initial `stock`. The `sku` is unique within the "
            "tenant (409 `SKU_TAKEN`); prices are integers in cents."
        ),
    ),
    Forward(
        "GET",
        "/products/{product_id}",
        Reader,
        "get_product",
        "A product of the tenant",
        answer=ProductOut,
        errors=GET_PRODUCT_ERRORS,
        description="One product of the caller's tenant with its current stock.",
    ),
    Forward(
        "PATCH",
        "/products/{product_id}",
        Writer,
        "update_product",
        "Change a product's sku, name or price",
        body=ProductUpdate,
        answer=ProductOut,
        errors=UPDATE_PRODUCT_ERRORS,
        description=(
            "Changes the fields sent (`sku`, `name`, `price_cents`); those left out stay as they are, and "
            "none may be null. Stock is changed with stock adjustments, not here. Orders already placed "
            "keep the price they were placed at."
        ),
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
        errors=ADJUST_STOCK_ERRORS,
        description=(
            "Adds (`delta` > 0) or removes (`delta` < 0) units with a `reason`, kept in the product's "
            "adjustment log with the stock after it. Stock never goes below zero (409 `INSUFFICIENT_STOCK`) "
            "nor above its maximum (409 `STOCK_LIMIT_EXCEEDED`)."
        ),
    ),
    Forward(
        "GET",
        ADJUSTMENTS,
        Reader,
        "list_adjustments",
        "A product's stock adjustments, newest first",
        answer=Page[StockAdjustmentOut],
        errors=LIST_ADJUSTMENTS_ERRORS,
        description="The product's stock adjustments, newest first, a page at a time, each with the stock after it.",
    ),
)
