from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from shared.contract import LineItems, ReservedLine, ResourceIdField
from shared.schemas import PLAIN_TEXT_PATTERN, refuse_null, with_examples

# The most units a product holds (the database holds every product to it too). Every sum of stock and
# prices stays far inside a 64-bit integer.
MAX_STOCK = 1_000_000_000
# Bounds keep every sum (line totals, order totals, stock) far inside a 64-bit integer.
MAX_PRICE_CENTS = 10_000_000_000

# Letters and digits first, then also . _ - : / (common in SKUs); case is kept and significant.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$"

# Integers are strict: "5", 5.0 and true are refused rather than quietly converted.
Sku = Annotated[str, Field(pattern=SKU_PATTERN, examples=["TSHIRT-BLUE-M"])]
ProductName = Annotated[str, Field(min_length=1, max_length=200, pattern=PLAIN_TEXT_PATTERN)]
PriceCents = Annotated[int, Field(strict=True, ge=0, le=MAX_PRICE_CENTS)]
ReservationStatus = Literal["reserved", "confirmed", "released"]
NOT_NULL = refuse_null("may be omitted but not null")
# The example of a product in the reference (ids as the other services' examples use them).
EXAMPLE_PRODUCT: JsonDict = {
    "id": "0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61",
    "sku": "TSHIRT-BLUE-M",
    "name": "T-shirt, blue, M",
    "price_cents": 1999,
    "stock": 50,
    "created_at": "2026-01-31T09:50:00Z",
    "updated_at": "2026-01-31T09:50:00Z",
}


class ProductCreate(BaseModel):
    model_config = with_examples(
        {"sku": "TSHIRT-BLUE-M", "name": "T-shirt, blue, M", "price_cents": 1999, "stock": 50},
        extra="forbid",
        str_strip_whitespace=True,
    )

    sku: Sku
    name: ProductName
    price_cents: PriceCents
    stock: int = Field(default=0, strict=True, ge=0, le=MAX_STOCK)


class ProductUpdate(BaseModel):
    """A partial update. Stock is not here: it changes only through adjustments and reservations."""

    model_config = with_examples({"price_cents": 2499}, extra="forbid", str_strip_whitespace=True)

    sku: Annotated[Sku | None, NOT_NULL] = None
    name: Annotated[ProductName | None, NOT_NULL] = None
    price_cents: Annotated[PriceCents | None, NOT_NULL] = None


class ProductOut(BaseModel):
    model_config = with_examples(EXAMPLE_PRODUCT, from_attributes=True)

    id: str
    sku: str
    name: str
    price_cents: int
    stock: int
    created_at: datetime
    updated_at: datetime


class StockAdjustmentCreate(BaseModel):
    model_config = with_examples({"delta": 25, "reason": "restock"}, extra="forbid", str_strip_whitespace=True)

    delta: int = Field(
        strict=True,
        ge=-MAX_STOCK,
        le=MAX_STOCK,
        description="Units added (>0) or removed (<0); never zero.",
        json_schema_extra={"not": {"const": 0}},
    )
    reason: str = Field(
        min_length=1, max_length=200, pattern=PLAIN_TEXT_PATTERN, examples=["restock", "damaged in transit"]
    )

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
        return value


class StockAdjustmentOut(BaseModel):
    model_config = with_examples(
        {
            "id": "e1d2c3b4-a5f6-4e7d-8c9b-0a1f2e3d4c5b",
            "product_id": EXAMPLE_PRODUCT["id"],
            "delta": 25,
            "reason": "restock",
            "stock_after": 75,
            "created_at": "2026-01-31T11:00:00Z",
        },
        from_attributes=True,
    )

    id: str
    product_id: str
    delta: int
    reason: str
    stock_after: int
    created_at: datetime


class ReservationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: ResourceIdField
    # The user the order is for, so a user's reservations can be listed.
    user_id: ResourceIdField | None = None
    items: LineItems


class StockCheck(BaseModel):
    """Lines whose stock is checked without taking any."""

    model_config = ConfigDict(extra="forbid")

    items: LineItems


class StockCheckLine(BaseModel):
    product_id: str
    quantity: int
    available: int
    unit_price_cents: int


class StockCheckOut(BaseModel):
    """Every line is in stock now (nothing is held: a later reservation may still be refused)."""

    items: list[StockCheckLine]
    total_cents: int


class ReservationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    order_id: str
    user_id: str | None
    status: ReservationStatus
    items: list[ReservedLine]
    created_at: datetime
    updated_at: datetime
