"""/orders: drafts, lines, placing and cancelling."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created, ok
from backend.models.order import Order
from backend.services.container import Services


def render(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "customer_id": order.customer.id,
        "status": str(order.status),
        "lines": [
            {"sku": line.product.sku, "quantity": line.quantity, "amount_cents": line.amount.cents}
            for line in order.lines
        ],
        "subtotal_cents": order.subtotal().cents,
        "currency": order.currency,
    }


def create(services: Services, request: dict[str, Any]) -> Response:
    order = services.orders.draft(request.get("body", {}).get("customer_id", ""))
    return created(render(order))


def add_line(services: Services, request: dict[str, Any], order_id: str) -> Response:
    body = request.get("body", {})
    order = services.orders.add_line(order_id, body.get("product_id", ""), int(body["quantity"]))
    return ok(render(order))


def place(services: Services, request: dict[str, Any], order_id: str) -> Response:
    return ok(render(services.orders.place(order_id)))


def cancel(services: Services, request: dict[str, Any], order_id: str) -> Response:
    return ok(render(services.orders.cancel(order_id)))
