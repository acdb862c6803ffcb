"""The pattern of resource ids, the line items an order and its reservation carry, and the lines as
the inventory service reserved them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

# Ids in paths and queries: the UUIDs the services hand out fit, and nothing longer than an id column,
# nor a dot or slash that could change a forwarded path, gets through.
RESOURCE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ResourceIdField = Annotated[str, Field(pattern=RESOURCE_ID_PATTERN)]
ResourceIdPath = Annotated[str, Path(pattern=RESOURCE_ID_PATTERN)]

# The lines of an order, as the orders service takes them and passes them on to reserve stock.
MAX_QUANTITY = 10_000
MAX_ITEMS = 100


class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: ResourceIdField
    # Strict: "2", 2.0 and true are refused rather than quietly converted.
    quantity: int = Field(strict=True, ge=1, le=MAX_QUANTITY)


LineItems = Annotated[list[LineItem], Field(min_length=1, max_length=MAX_ITEMS)]


class ReservedLine(BaseModel):
    """A line as the inventory service reserved it, with the product's sku, name and the price it read
    while taking the stock; the orders service keeps these in the order."""

    model_config = ConfigDict(from_attributes=True)

    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
