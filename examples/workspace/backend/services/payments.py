"""Capturing payments; a settling payment marks the invoice and the order paid."""

from __future__ import annotations

from backend.core.errors import PaymentDeclined
from backend.core.events import bus
from backend.models.order import OrderStatus
from backend.models.payment import Payment, PaymentMethod
from backend.repositories.memory import Repository
from backend.services.billing import BillingService
from backend.utils.money import Money


class PaymentService:
    def __init__(self, billing: BillingService) -> None:
        self.billing = billing
        self.payments = Repository[Payment]("payment")

    def capture(self, invoice_id: str, amount_cents: int, method: str = "card") -> Payment:
        invoice = self.billing.invoices.get(invoice_id)
        if amount_cents <= 0:
            raise PaymentDeclined("the amount must be positive", field="amount")
        payment = Payment(
            invoice=invoice,
            amount=Money(amount_cents, invoice.gross.currency),
            method=PaymentMethod(method),
        )
        self.payments.add(payment)
        if payment.settles_invoice:
            invoice.paid = True
            invoice.order.move(OrderStatus.PAID)
        bus.publish("payment.captured", payment_id=payment.id, invoice_id=invoice.id)
        return payment
