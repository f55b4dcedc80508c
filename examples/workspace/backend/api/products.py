"""/products: the catalogue, with repricing and retirement."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created, ok
from backend.models.product import Product
from backend.services.container import Services


def render(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "sku": product.sku,
        "title": product.title,
        "slug": product.slug,
        "price_cents": product.price.cents,
        "currency": product.price.currency,
        "active": product.active,
    }


def create(services: Services, request: dict[str, Any]) -> Response:
    body = request.get("body", {})
    product = services.catalog.add(
        sku=body.get("sku", ""),
        title=body.get("title", ""),
        price_cents=int(body.get("price_cents", 0)),
        currency=services.settings.currency,
    )
    return created(render(product))


def listing(services: Services, request: dict[str, Any]) -> Response:
    return ok({"results": [render(p) for p in services.catalog.active()]})


def reprice(services: Services, request: dict[str, Any], product_id: str) -> Response:
    price = int(request.get("body", {}).get("price_cents", 0))
    return ok(render(services.catalog.reprice(product_id, price)))


def retire(services: Services, request: dict[str, Any], product_id: str) -> Response:
    return ok(render(services.catalog.retire(product_id)))
