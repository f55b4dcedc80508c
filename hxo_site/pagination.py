"""The API's page numbers, read by the one parser for numbers in URLs (`parameters`)."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import PageNumberPagination

from hxo_site import parameters


class StrictPageNumberPagination(PageNumberPagination):
    """DRF's page-number pagination, with `?page=` given at most once and in ASCII digits:
    DRF reads it with `int()`, so "٣" would be page 3 (and a repeated page its last value)."""

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        raw = parameters.one(request.query_params, self.page_query_param)
        if raw is None or raw in self.last_page_strings:
            return super().get_page_number(request, paginator)
        return str(parameters.parse_int(raw, name=self.page_query_param, minimum=1))

    def get_page_size(self, request: Any) -> int | None:
        if self.page_size_query_param:
            raw = parameters.one(request.query_params, self.page_size_query_param)
            if raw is not None:
                size = parameters.parse_int(raw, name=self.page_size_query_param, minimum=1)
                return min(size, self.max_page_size) if self.max_page_size else size
        return self.page_size
