"""Placing and cancelling orders; placing reserves stock for every line."""

from __future__ import annotations

from backend.core.events import bus
from backend.models.order import Order, OrderStatus
from backend.repositories.memory import Repository
from backend.services.catalog import CatalogService
from backend.services.customers import CustomerService
from backend.services.inventory import InventoryService


class OrderService:
    def __init__(
        self,
        customers: CustomerService,
        catalog: CatalogService,
        inventory: InventoryService,
    ) -> None:
        self.customers = customers
        self.catalog = catalog
        self.inventory = inventory
        self.orders = Repository[Order]("order")

    def draft(self, customer_id: str) -> Order:
        return self.orders.add(Order(customer=self.customers.customers.get(customer_id)))

    def add_line(self, order_id: str, product_id: str, quantity: int) -> Order:
        order = self.orders.get(order_id)
        order.add(self.catalog.products.get(product_id), quantity)
        return order

    def place(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        for line in order.lines:
            self.inventory.reserve(line.product, line.quantity)
        order.move(OrderStatus.PLACED)
        bus.publish("order.placed", order_id=order.id, total_cents=order.subtotal().cents)
        return order

    def cancel(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order.status is OrderStatus.PLACED:
            for line in order.lines:
                self.inventory.level(line.product).release(line.quantity)
        order.move(OrderStatus.CANCELLED)
        bus.publish("order.cancelled", order_id=order.id)
        return order
