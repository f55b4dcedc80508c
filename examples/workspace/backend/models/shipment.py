"""Shipments of paid orders, with a carrier and an estimated delivery date."""

from __future__ import annotations

import dataclasses
import datetime as dt

from backend.models.base import Entity
from backend.models.order import Order
from backend.utils.dates import add_business_days

CARRIER_DAYS = {"postal": 4, "express": 1, "freight": 7}


@dataclasses.dataclass(kw_only=True)
class Shipment(Entity):
    id_prefix = "shp"

    order: Order
    carrier: str = "postal"
    tracking_code: str = ""
    delivered_on: dt.date | None = None

    @property
    def estimated_delivery(self) -> dt.date:
        return add_business_days(self.created_at.date(), CARRIER_DAYS.get(self.carrier, 5))
