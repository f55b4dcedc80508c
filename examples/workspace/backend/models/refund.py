"""Refunds: money returned against a captured payment, never more than was paid."""

from __future__ import annotations

import dataclasses

from backend.core.errors import ValidationFailed
from backend.models.base import Entity
from backend.models.payment import Payment
from backend.utils.money import Money


@dataclasses.dataclass(kw_only=True)
class Refund(Entity):
    id_prefix = "ref"

    payment: Payment
    amount: Money
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.amount > self.payment.amount:
            raise ValidationFailed("a refund cannot exceed its payment", field="amount")
