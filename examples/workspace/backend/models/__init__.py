"""Domain entities. Plain dataclasses: persistence lives in `backend.repositories`."""

from backend.models.customer import Customer
from backend.models.inventory import StockLevel
from backend.models.invoice import Invoice
from backend.models.order import Order, OrderLine
from backend.models.payment import Payment
from backend.models.product import Product
from backend.models.refund import Refund
from backend.models.shipment import Shipment

__all__ = [
    "Customer",
    "Invoice",
    "Order",
    "OrderLine",
    "Payment",
    "Product",
    "Refund",
    "Shipment",
    "StockLevel",
]
