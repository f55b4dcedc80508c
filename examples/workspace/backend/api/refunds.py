"""/refunds: refund part or all of a captured payment."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created
from backend.models.refund import Refund
from backend.services.container import Services


def render(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment.id,
        "amount_cents": refund.amount.cents,
        "reason": refund.reason,
    }


def create(services: Services, request: dict[str, Any]) -> Response:
    body = request.get("body", {})
    refund = services.refunds.refund(
        body.get("payment_id", ""), int(body.get("amount_cents", 0)), body.get("reason", "")
    )
    return created(render(refund))
