"""Refunding captured payments, in part or in full."""

from __future__ import annotations

from backend.core.events import bus
from backend.models.refund import Refund
from backend.repositories.memory import Repository
from backend.services.payments import PaymentService
from backend.utils.money import Money, total


class RefundService:
    def __init__(self, payments: PaymentService) -> None:
        self.payments = payments
        self.refunds = Repository[Refund]("refund")

    def refunded(self, payment_id: str) -> Money:
        payment = self.payments.payments.get(payment_id)
        given = [r.amount for r in self.refunds.filter(lambda r: r.payment.id == payment_id)]
        return total(given, payment.amount.currency)

    def refund(self, payment_id: str, amount_cents: int, reason: str = "") -> Refund:
        payment = self.payments.payments.get(payment_id)
        remaining = payment.amount - self.refunded(payment_id)
        amount = Money(min(amount_cents, remaining.cents), payment.amount.currency)
        refund = self.refunds.add(Refund(payment=payment, amount=amount, reason=reason))
        bus.publish("payment.refunded", payment_id=payment.id, amount_cents=amount.cents)
        return refund
