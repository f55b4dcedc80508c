"""Routes of the search API under /api/v1/search/."""

from __future__ import annotations

from django.urls import path

from runs_app import search_api

urlpatterns = [
    path("assets/", search_api.AssetSearch.as_view(), name="search-assets"),
    path("docs/", search_api.DocSearch.as_view(), name="search-docs"),
]
