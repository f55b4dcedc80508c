"""/shipments: ship a paid order, mark a delivery."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created, ok
from backend.models.shipment import Shipment
from backend.services.container import Services


def render(shipment: Shipment) -> dict[str, Any]:
    return {
        "id": shipment.id,
        "order_id": shipment.order.id,
        "carrier": shipment.carrier,
        "estimated_delivery": shipment.estimated_delivery.isoformat(),
        "delivered_on": shipment.delivered_on.isoformat() if shipment.delivered_on else None,
    }


def create(services: Services, request: dict[str, Any]) -> Response:
    body = request.get("body", {})
    shipment = services.shipping.ship(body.get("order_id", ""), body.get("carrier", "postal"))
    return created(render(shipment))


def delivered(services: Services, request: dict[str, Any], shipment_id: str) -> Response:
    return ok(render(services.shipping.delivered(shipment_id)))
