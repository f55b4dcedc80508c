"""URL routes: the dashboard, the admin, REST API v1 and its OpenAPI document."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from hxo_site.auth_views import ObtainToken

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/auth/token/", ObtainToken.as_view(), name="auth-token"),
    path("api/v1/", include("blueprints_app.api_urls")),
    path("api/v1/", include("runs_app.api_urls")),
    path("api/v1/search/", include("runs_app.search_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file (?script=), so the page
    # runs under a Content-Security-Policy without inline scripts.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(
            url_name="api-schema", template_name="blueprints_app/swagger_ui.html"
        ),
        name="api-docs",
    ),
    path("", include("runs_app.urls")),
]
# With DEBUG on, static files are served by Django under any server (runserver does it by
# itself; gunicorn in `make run-scaled` needs this). Empty with DEBUG off: the proxy serves them.
urlpatterns += staticfiles_urlpatterns()

# Under /api/ errors keep the API's shape, even for URLs that match no route.
handler400 = "hxo_site.error_views.bad_request"
handler403 = "hxo_site.error_views.permission_denied"
handler404 = "hxo_site.error_views.page_not_found"
handler500 = "hxo_site.error_views.server_error"
