"""The API's pagination: page numbers by default, cursors when the client asks for them.

Page numbers (`?page=`) are what the dashboard and existing clients use; they shift when rows
arrive or leave the filtered set while a client pages (a new run repeats the last ids of page
1 on page 2; a pending partition claimed between two reads moves the rest one place up and
one is never listed). A cursor (`?pagination=cursor`, then the `next` link's `?cursor=`)
names the last row read by a unique, stable key, so the next page starts right after it
whatever arrived or left meanwhile (DRF's `CursorPagination`, after David Cramer's "Building
Cursors for the Disqus API"). Both read their parameters through the one parser for URL
parameters (`parameters`): given at most once, a bad value is a 400 naming the parameter.
"""

from __future__ import annotations

from base64 import b64decode
from typing import Any
from urllib.parse import parse_qs

from rest_framework.exceptions import NotFound
from rest_framework.pagination import BasePagination, CursorPagination, PageNumberPagination
from rest_framework.response import Response

from hxo_site import parameters

# `?pagination=` values: page numbers (the default) or cursors.
PAGES = "pages"
CURSOR = "cursor"
# `?page_size=`: rows per page for either kind, 1 to MAX_PAGE_SIZE (a larger value is capped,
# as DRF does); absent, the API's PAGE_SIZE (50).
PAGE_SIZE_PARAM = "page_size"
MAX_PAGE_SIZE = 500


class StrictPageNumberPagination(PageNumberPagination):
    """DRF's page-number pagination, with `?page=` given at most once and in ASCII digits:
    DRF reads it with `int()`, so "٣" would be page 3 (and a repeated page its last value).
    `?page_size=` (1 to MAX_PAGE_SIZE) sets the rows per page, read the same way."""

    page_size_query_param = PAGE_SIZE_PARAM
    max_page_size = MAX_PAGE_SIZE

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


class StrictCursorPagination(CursorPagination):
    """DRF's cursor pagination on one unique field (`ordering`, e.g. "-id"), so that a
    position never ties: with a non-unique first field DRF counts an offset among the ties,
    which shifts exactly as page numbers do. A cursor that does not decode is a 400 on
    `cursor` (DRF answers 404), and `?cursor=` is read at most once. Pages are as long as
    page numbers' (`PAGE_SIZE`, or `?page_size=` up to MAX_PAGE_SIZE, read strictly)."""

    page_size_query_param = PAGE_SIZE_PARAM
    max_page_size = MAX_PAGE_SIZE

    def get_page_size(self, request: Any) -> int | None:
        return StrictPageNumberPagination.get_page_size(self, request)  # type: ignore[arg-type]

    def decode_cursor(self, request: Any) -> Any:
        """DRF's cursor, or ParameterError (400 on `cursor`) for anything this API did not
        give: DRF decodes any base64 (`AAAA` read as the first page) and takes any position
        (`p=abc` reached the database as a non-integer id: a 500)."""
        raw = parameters.one(request.query_params, self.cursor_query_param)
        refused = parameters.ParameterError(
            self.cursor_query_param, "not a cursor this API gave (use a `next` link)"
        )
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise refused from None
        if cursor is None:
            return None
        try:
            fields = parse_qs(b64decode(raw.encode("ascii")).decode("ascii"), strict_parsing=True)
        except (ValueError, UnicodeError):
            raise refused from None
        if not fields or set(fields) - {"o", "r", "p"}:
            raise refused
        # The one ordering field is a positive integer id: its position must read as one
        # (`p=-1` named no row this API gave, and answered an empty page).
        if cursor.position is not None and not (
            str(cursor.position).isascii() and str(cursor.position).isdigit()
        ):
            raise refused
        return cursor


class PagesOrCursor(BasePagination):
    """Page numbers unless the client asks for a cursor: `?pagination=cursor` starts at the
    first page; the answer's `next` and `previous` links carry `?cursor=` (and keep
    `pagination=cursor` and the filters). Page numbers answer `{count, next, previous,
    results}`; cursors `{next, previous, results}` (a count would cost a scan and change
    under the reader anyway).

    Subclass with `cursor_ordering`, one unique field the rows are ordered by (e.g. "-id").
    `?page=` with a cursor, or an unknown `?pagination=`, is a 400 on that parameter
    (`parameters.ParameterError`)."""

    cursor_ordering: str = "-id"

    def __init__(self) -> None:
        self.active: BasePagination | None = None

    def _choose(self, request: Any) -> BasePagination:
        query = request.query_params
        mode = parameters.choice(query, "pagination", [PAGES, CURSOR])
        has_cursor = parameters.one(query, "cursor") is not None
        if has_cursor and mode == PAGES:
            raise parameters.ParameterError("cursor", "a cursor is read with pagination=cursor")
        if mode == CURSOR or has_cursor:
            if parameters.one(query, "page") is not None:
                raise parameters.ParameterError("page", "page numbers and cursors do not mix")
            cursor = StrictCursorPagination()
            cursor.ordering = self.cursor_ordering
            return cursor
        return StrictPageNumberPagination()

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> Any:
        """The rows of the requested page (a list); raises `ParameterError` on bad input."""
        self.active = self._choose(request)
        return self.active.paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        assert self.active is not None
        return self.active.get_paginated_response(data)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The page numbers' shape, with `count` present only for page numbers."""
        shape = StrictPageNumberPagination().get_paginated_response_schema(schema)
        shape["required"] = [name for name in shape.get("required", []) if name != "count"]
        shape["properties"]["count"]["description"] = "Absent with pagination=cursor."
        return shape

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        """`page` and `page_size` (with its bounds) as today, plus `pagination` and `cursor`."""
        params = StrictPageNumberPagination().get_schema_operation_parameters(view)
        for param in params:
            if param.get("name") == PAGE_SIZE_PARAM:
                param["schema"] = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}
        params += [
            {
                "name": "pagination",
                "required": False,
                "in": "query",
                "description": "`pages` (the default: `?page=` numbers and a `count`) or "
                "`cursor`: pages that hold still while rows arrive or change state; follow "
                "the answer's `next` link, which carries `cursor`.",
                "schema": {"type": "string", "enum": [PAGES, CURSOR]},
            },
            {
                "name": "cursor",
                "required": False,
                "in": "query",
                "description": "An opaque position from a `next` or `previous` link "
                "(implies pagination=cursor).",
                "schema": {"type": "string"},
            },
        ]
        return params


class RunsPagination(PagesOrCursor):
    """Runs newest first: ids are unique and grow with creation."""

    cursor_ordering = "-id"


class PartitionsPagination(PagesOrCursor):
    """A run's partitions by id: unique, and never changed by a claim or a completion (the
    (stage, index) order of page numbers is not one field, and DRF's cursor keeps one). The
    partitioner writes a stage's partitions in index order, so the two orders agree."""

    cursor_ordering = "id"


class AuditPagination(PagesOrCursor):
    """Audit events newest first: ids grow with `at` (written when the event happens)."""

    cursor_ordering = "-id"
