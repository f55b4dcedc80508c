"""/payments: capture a payment against an invoice."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created
from backend.models.payment import Payment
from backend.services.container import Services


def render(payment: Payment) -> dict[str, Any]:
    return {
        "id": payment.id,
        "invoice_id": payment.invoice.id,
        "amount_cents": payment.amount.cents,
        "method": str(payment.method),
        "settles_invoice": payment.settles_invoice,
    }


def capture(services: Services, request: dict[str, Any]) -> Response:
    body = request.get("body", {})
    payment = services.payments.capture(
        body.get("invoice_id", ""), int(body.get("amount_cents", 0)), body.get("method", "card")
    )
    return created(render(payment))
