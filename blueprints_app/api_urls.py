"""Routes of the registry API under /api/v1/."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from blueprints_app import api

# SimpleRouter: no format-suffix routes, which would read deploy.pack as kind "deploy" in
# format "pack".
router = SimpleRouter()
router.register("job-kinds", api.JobKindViewSet, basename="job-kind")

urlpatterns = [
    path("partitioners/", api.PartitionerList.as_view(), name="partitioner-list"),
    path("executors/", api.ExecutorList.as_view(), name="executor-list"),
    path("validate/", api.ValidateView.as_view(), name="validate"),
    *router.urls,
]
