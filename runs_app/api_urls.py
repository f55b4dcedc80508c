"""Routes of the plans and runs API under /api/v1/."""

from __future__ import annotations

from django.urls import path

from runs_app import api

urlpatterns = [
    path("plans/", api.PlanListCreate.as_view(), name="plan-list"),
    path("plans/<int:pk>/", api.PlanDetail.as_view(), name="plan-detail"),
    path("plans/<int:pk>/revisions/", api.PlanRevisions.as_view(), name="plan-revisions"),
    path("plans/<int:pk>/dry-run/", api.PlanDryRun.as_view(), name="plan-dry-run"),
    path("plans/<int:pk>/apply/", api.PlanApply.as_view(), name="plan-apply"),
    path("plans/<int:pk>/migrate/", api.PlanMigrate.as_view(), name="plan-migrate"),
    path("runs/", api.RunList.as_view(), name="run-list"),
    path("runs/<int:pk>/", api.RunDetail.as_view(), name="run-detail"),
    path("runs/<int:pk>/partitions/", api.RunPartitions.as_view(), name="run-partitions"),
    path(
        "runs/<int:pk>/partitions/<int:index>/log/",
        api.RunPartitionLog.as_view(),
        name="run-partition-log",
    ),
    path("runs/<int:pk>/approve/", api.RunApprove.as_view(), name="run-approve"),
    path("runs/<int:pk>/reject/", api.RunReject.as_view(), name="run-reject"),
    path("runs/<int:pk>/abort/", api.RunAbort.as_view(), name="run-abort"),
    path("runs/<int:pk>/pause/", api.RunPause.as_view(), name="run-pause"),
    path("runs/<int:pk>/resume/", api.RunResume.as_view(), name="run-resume"),
    path("runs/<int:pk>/throttle/", api.RunThrottle.as_view(), name="run-throttle"),
    path("runs/<int:pk>/replay/", api.RunReplay.as_view(), name="run-replay"),
    path("runs/<int:pk>/receipt/", api.RunReceipt.as_view(), name="run-receipt"),
    path("runs/<int:pk>/diff/", api.RunDiff.as_view(), name="run-diff"),
    path("audit/", api.AuditList.as_view(), name="audit-list"),
]
