"""/invoices: issue an invoice for a placed order, list what is outstanding."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created, ok
from backend.models.invoice import Invoice
from backend.services.container import Services


def render(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "order_id": invoice.order.id,
        "net_cents": invoice.net.cents,
        "tax_cents": invoice.tax.cents,
        "gross_cents": invoice.gross.cents,
        "due_on": invoice.due_on.isoformat(),
        "paid": invoice.paid,
    }


def create(services: Services, request: dict[str, Any]) -> Response:
    return created(render(services.billing.invoice(request.get("body", {}).get("order_id", ""))))


def outstanding(services: Services, request: dict[str, Any]) -> Response:
    return ok({"results": [render(i) for i in services.billing.outstanding()]})
