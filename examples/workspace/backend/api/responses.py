"""Responses and the one error shape: {"error": {"code", "message", "field"}}."""

from __future__ import annotations

import dataclasses
from typing import Any

from backend.core.errors import ShopfrontError
from backend.utils.pagination import Page


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]


def ok(body: dict[str, Any], status: int = 200) -> Response:
    return Response(status, body)


def created(body: dict[str, Any]) -> Response:
    return Response(201, body)


def from_error(exc: ShopfrontError) -> Response:
    return Response(exc.status, {"error": exc.as_dict()})


def page(result: Page[Any], render: Any) -> Response:
    return ok(
        {
            "results": [render(item) for item in result.items],
            "page": result.number,
            "pages": result.pages,
            "total": result.total,
        }
    )


def query_int(request: dict[str, Any], name: str, default: int) -> int:
    raw = request.get("query", {}).get(name)
    return default if raw in (None, "") else int(raw)
