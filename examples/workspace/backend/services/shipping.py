"""Shipping paid orders and recording deliveries."""

from __future__ import annotations

from backend.core.errors import Conflict
from backend.core.events import bus
from backend.models.order import OrderStatus
from backend.models.shipment import CARRIER_DAYS, Shipment
from backend.repositories.memory import Repository
from backend.services.orders import OrderService
from backend.utils.dates import now


class ShippingService:
    def __init__(self, orders: OrderService) -> None:
        self.orders = orders
        self.shipments = Repository[Shipment]("shipment")

    def ship(self, order_id: str, carrier: str = "postal") -> Shipment:
        order = self.orders.orders.get(order_id)
        if order.status is not OrderStatus.PAID:
            raise Conflict(f"order {order.id} is {order.status}; only paid orders ship")
        if carrier not in CARRIER_DAYS:
            raise Conflict(f"unknown carrier {carrier!r}", field="carrier")
        shipment = self.shipments.add(Shipment(order=order, carrier=carrier))
        order.move(OrderStatus.SHIPPED)
        bus.publish("order.shipped", order_id=order.id, shipment_id=shipment.id)
        return shipment

    def delivered(self, shipment_id: str) -> Shipment:
        shipment = self.shipments.get(shipment_id)
        shipment.delivered_on = now().date()
        return shipment
