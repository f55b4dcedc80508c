"""URL routes: the dashboard, the admin, REST API v1 and its OpenAPI document."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("blueprints_app.api_urls")),
    path("api/v1/", include("runs_app.api_urls")),
    path("api/v1/search/", include("runs_app.search_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("runs_app.urls")),
]
