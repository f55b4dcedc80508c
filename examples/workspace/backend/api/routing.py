"""The route table: (method, pattern) → handler, and dispatch with error mapping."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from backend.api import (
    customers,
    inventory,
    invoices,
    orders,
    payments,
    products,
    refunds,
    shipments,
)
from backend.api.responses import Response, from_error
from backend.core.errors import NotFound, ShopfrontError
from backend.services.container import Services

Handler = Callable[..., Response]

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", r"/customers/", customers.listing),
    ("POST", r"/customers/", customers.create),
    ("GET", r"/customers/(?P<customer_id>cus_\w+)/", customers.detail),
    ("POST", r"/customers/(?P<customer_id>cus_\w+)/consent/", customers.consent),
    ("GET", r"/products/", products.listing),
    ("POST", r"/products/", products.create),
    ("POST", r"/products/(?P<product_id>prd_\w+)/price/", products.reprice),
    ("POST", r"/products/(?P<product_id>prd_\w+)/retire/", products.retire),
    ("GET", r"/inventory/(?P<product_id>prd_\w+)/", inventory.availability),
    ("POST", r"/inventory/(?P<product_id>prd_\w+)/receive/", inventory.receive),
    ("POST", r"/orders/", orders.create),
    ("POST", r"/orders/(?P<order_id>ord_\w+)/lines/", orders.add_line),
    ("POST", r"/orders/(?P<order_id>ord_\w+)/place/", orders.place),
    ("POST", r"/orders/(?P<order_id>ord_\w+)/cancel/", orders.cancel),
    ("GET", r"/invoices/outstanding/", invoices.outstanding),
    ("POST", r"/invoices/", invoices.create),
    ("POST", r"/payments/", payments.capture),
    ("POST", r"/shipments/", shipments.create),
    ("POST", r"/shipments/(?P<shipment_id>shp_\w+)/delivered/", shipments.delivered),
    ("POST", r"/refunds/", refunds.create),
]
_COMPILED = [(method, re.compile(f"^{pattern}$"), handler) for method, pattern, handler in ROUTES]


def dispatch(services: Services, method: str, path: str, request: dict[str, Any]) -> Response:
    for route_method, pattern, handler in _COMPILED:
        match = pattern.match(path)
        if match and route_method == method.upper():
            try:
                return handler(services, request, **match.groupdict())
            except ShopfrontError as exc:
                return from_error(exc)
    return from_error(NotFound(f"no route for {method} {path}"))
