"""Routes of the webhooks service. The gateway reaches them with an internal identity."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
