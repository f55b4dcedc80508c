"""REST API v1 search endpoints: GET /api/v1/search/assets/?q= and /api/v1/search/docs/?q=.

Both need `hxo:view`, answer a missing or empty `q` with 400 `query_required`, and return the
ranked hits of `runs_app.search` in pages (`count`, `next`, `previous`, `results`). Pages
reach the best `hits_limit` (MAX_HITS) hits; `count` is every match all the same (counted apart
when the hits reach the limit), and `results_available` says how many the pages hold. A
search that runs past HXO_SEARCH_TIMEOUT_MS is stopped and answered 503 `search_timeout`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hxo_site import parameters
from hxo_site.errors import ApiError
from hxo_site.pagination import StrictPageNumberPagination
from hxo_site.permissions import capability_required
from hxo_site.serializers import ErrorSerializer
from runs_app import search
from runs_app.workspaces import workspace_names

PARAMETERS = [
    OpenApiParameter(
        "q", str, description="Words to find; in double quotes, a phrase", required=True
    ),
    OpenApiParameter(
        "workspace",
        str,
        description="Only hits of this registered workspace; given twice or unknown: 400",
    ),
    OpenApiParameter("page", int, description="Page number"),
]
ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="`q` missing, empty or too long"),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated"),
    403: OpenApiResponse(ErrorSerializer, description="Missing hxo:view"),
    503: OpenApiResponse(
        ErrorSerializer,
        description="`search_timeout`: the query ran past HXO_SEARCH_TIMEOUT_MS and was stopped",
    ),
}


class SearchPagination(StrictPageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class _SearchView(APIView):
    permission_classes = [capability_required("view")]
    search: ClassVar[Callable[..., list[dict[str, Any]]]]
    count: ClassVar[Callable[..., int]]

    def get(self, request: Request) -> Response:
        try:
            q = search.clean_query(parameters.one(request.query_params, "q"))
        except search.SearchError as exc:
            raise ApiError(str(exc), code=exc.code) from None
        workspace = parameters.choice(request.query_params, "workspace", workspace_names())
        try:
            hits = type(self).search(q, limit=search.MAX_HITS, workspace=workspace)
            # Hits stop at MAX_HITS; below it they are every match, at it the true number is
            # counted apart (a COUNT, no ranking nor snippets).
            total = (
                type(self).count(q, workspace=workspace)
                if len(hits) >= search.MAX_HITS
                else len(hits)
            )
        except search.SearchError as exc:
            # Past HXO_SEARCH_TIMEOUT_MS: the worker is free again, the client may retry.
            raise ApiError(str(exc), code=exc.code, status_code=503) from None
        paginator = SearchPagination()
        page = paginator.paginate_queryset(hits, request, view=self)  # type: ignore[arg-type]
        response = paginator.get_paginated_response(page)
        response.data["query"] = q
        response.data["count"] = total
        response.data["results_available"] = len(hits)
        response.data["hits_limit"] = search.MAX_HITS
        return response


class AssetSearch(_SearchView):
    count = staticmethod(search.count_assets)  # before `search` shadows the module here
    search = staticmethod(search.search_assets)

    @extend_schema(
        operation_id="search_assets",
        summary="Search the asset index",
        parameters=PARAMETERS,
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return super().get(request)


class DocSearch(_SearchView):
    count = staticmethod(search.count_docs)  # before `search` shadows the module here
    search = staticmethod(search.search_docs)

    @extend_schema(
        operation_id="search_docs",
        summary="Full-text search of the documentation index",
        parameters=PARAMETERS,
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return super().get(request)
