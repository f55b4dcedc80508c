"""Payments against invoices. A payment is captured once; refunds are separate entities."""

from __future__ import annotations

import dataclasses
import enum

from backend.models.base import Entity
from backend.models.invoice import Invoice
from backend.utils.money import Money


class PaymentMethod(enum.StrEnum):
    CARD = "card"
    TRANSFER = "transfer"
    WALLET = "wallet"


@dataclasses.dataclass(kw_only=True)
class Payment(Entity):
    id_prefix = "pay"

    invoice: Invoice
    amount: Money
    method: PaymentMethod = PaymentMethod.CARD
    reference: str = ""

    @property
    def settles_invoice(self) -> bool:
        return self.amount >= self.invoice.gross
