"""The states a service's API shows are the states its models hold: one list each."""

from __future__ import annotations

from typing import get_args

from services.inventory import models as inventory_models
from services.inventory import schemas as inventory_schemas
from services.orders import models as orders_models
from services.orders import schemas as orders_schemas


def test_the_states_the_apis_show_are_the_states_the_models_hold():
    assert set(get_args(orders_schemas.OrderStatus)) == set(orders_models.OrderState)
    assert set(get_args(inventory_schemas.ReservationStatus)) == set(inventory_models.ReservationState)
    # The orders service's copy of a reservation's status names the inventory's states.
    assert set(orders_models.ReservationState) == set(inventory_models.ReservationState)
