"""The nightly report: revenue, outstanding invoices and low stock, as one dict."""

from __future__ import annotations

from typing import Any

from backend.models.order import OrderStatus
from backend.services.container import Services
from backend.utils.dates import iso, now
from backend.utils.money import total


def report(services: Services) -> dict[str, Any]:
    currency = services.settings.currency
    settled = (OrderStatus.PAID, OrderStatus.SHIPPED)
    paid = [o for o in services.orders.orders if o.status in settled]
    outstanding = services.billing.outstanding()
    low = [
        level.product.sku
        for level in services.inventory.levels.values()
        if level.available <= services.settings.low_stock_threshold
    ]
    return {
        "generated_at": iso(now()),
        "orders_paid": len(paid),
        "revenue": str(total([o.subtotal() for o in paid], currency)),
        "invoices_outstanding": len(outstanding),
        "outstanding": str(total([i.gross for i in outstanding], currency)),
        "low_stock": sorted(low),
    }
