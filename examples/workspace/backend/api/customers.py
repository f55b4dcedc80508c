"""/customers: register, read, list and change marketing consent."""

from __future__ import annotations

from typing import Any

from backend.api.responses import Response, created, ok, page, query_int
from backend.models.customer import Customer
from backend.services.container import Services


def render(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "email_domain": customer.email_domain,
        "country": customer.country,
        "marketing_opt_in": customer.marketing_opt_in,
    }


def create(services: Services, request: dict[str, Any]) -> Response:
    body = request.get("body", {})
    customer = services.customers.register(
        name=body.get("name", ""), email=body.get("email", ""), country=body.get("country", "")
    )
    return created(render(customer))


def detail(services: Services, request: dict[str, Any], customer_id: str) -> Response:
    return ok(render(services.customers.customers.get(customer_id)))


def listing(services: Services, request: dict[str, Any]) -> Response:
    result = services.customers.customers.page(
        query_int(request, "page", 1), query_int(request, "page_size", services.settings.page_size)
    )
    return page(result, render)


def consent(services: Services, request: dict[str, Any], customer_id: str) -> Response:
    opted_in = bool(request.get("body", {}).get("marketing_opt_in"))
    return ok(render(services.customers.opt_in(customer_id, opted_in)))
