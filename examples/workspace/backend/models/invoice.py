"""Invoices: one per placed order, with tax computed at the configured rate."""

from __future__ import annotations

import dataclasses
import datetime as dt

from backend.models.base import Entity
from backend.models.order import Order
from backend.utils.dates import add_business_days
from backend.utils.money import Money


@dataclasses.dataclass(kw_only=True)
class Invoice(Entity):
    id_prefix = "inv"

    order: Order
    net: Money
    tax: Money
    due_on: dt.date
    paid: bool = False

    @property
    def gross(self) -> Money:
        return self.net + self.tax

    @classmethod
    def for_order(cls, order: Order, *, tax_rate_percent: int, terms_days: int = 14) -> Invoice:
        net = order.subtotal()
        return cls(
            order=order,
            net=net,
            tax=net.percent(tax_rate_percent),
            due_on=add_business_days(order.created_at.date(), terms_days),
        )
