"""All services wired together once, in dependency order; handlers receive this container."""

from __future__ import annotations

import dataclasses

from backend.core.config import Settings
from backend.services.billing import BillingService
from backend.services.catalog import CatalogService
from backend.services.customers import CustomerService
from backend.services.inventory import InventoryService
from backend.services.orders import OrderService
from backend.services.payments import PaymentService
from backend.services.refunds import RefundService
from backend.services.shipping import ShippingService


@dataclasses.dataclass
class Services:
    settings: Settings
    customers: CustomerService
    catalog: CatalogService
    inventory: InventoryService
    orders: OrderService
    billing: BillingService
    payments: PaymentService
    shipping: ShippingService
    refunds: RefundService


def build(settings: Settings) -> Services:
    customers = CustomerService()
    catalog = CatalogService()
    inventory = InventoryService(catalog, settings)
    orders = OrderService(customers, catalog, inventory)
    billing = BillingService(orders, settings)
    payments = PaymentService(billing)
    return Services(
        settings=settings,
        customers=customers,
        catalog=catalog,
        inventory=inventory,
        orders=orders,
        billing=billing,
        payments=payments,
        shipping=ShippingService(orders),
        refunds=RefundService(payments),
    )
