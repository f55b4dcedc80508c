"""/inventory: receive stock and read availability per product."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, ok
from backend.models.inventory import StockLevel
from backend.services.container import Services


def render(level: StockLevel) -> dict[str, Any]:
    return {
        "product_id": level.product.id,
        "sku": level.product.sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
    }


def receive(services: Services, request: dict[str, Any], product_id: str) -> Response:
    quantity = int(request.get("body", {}).get("quantity", 0))
    return ok(render(services.inventory.receive(product_id, quantity)))


def availability(services: Services, request: dict[str, Any], product_id: str) -> Response:
    product = services.catalog.products.get(product_id)
    return ok(render(services.inventory.level(product)))
