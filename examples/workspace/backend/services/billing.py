"""Invoicing placed orders at the configured tax rate."""

from __future__ import annotations

from backend.core.config import Settings
from backend.core.errors import Conflict
from backend.core.events import bus
from backend.models.invoice import Invoice
from backend.models.order import OrderStatus
from backend.repositories.memory import Repository
from backend.services.orders import OrderService


class BillingService:
    def __init__(self, orders: OrderService, settings: Settings) -> None:
        self.orders = orders
        self.settings = settings
        self.invoices = Repository[Invoice]("invoice")

    def invoice(self, order_id: str) -> Invoice:
        order = self.orders.orders.get(order_id)
        if order.status is not OrderStatus.PLACED:
            raise Conflict(f"only placed orders are invoiced; {order.id} is {order.status}")
        if self.invoices.filter(lambda i: i.order.id == order.id):
            raise Conflict(f"order {order.id} already has an invoice")
        invoice = Invoice.for_order(order, tax_rate_percent=self.settings.tax_rate_percent)
        bus.publish("invoice.issued", invoice_id=invoice.id, gross_cents=invoice.gross.cents)
        return self.invoices.add(invoice)

    def outstanding(self) -> list[Invoice]:
        return self.invoices.filter(lambda i: not i.paid)
