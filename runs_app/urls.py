"""Routes of the dashboard (HTML pages and their htmx partials)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from hxo_site.auth_views import ThrottledLoginView
from runs_app.views import metrics, pages, plans, runs

urlpatterns = [
    path("", pages.home, name="home"),
    path(
        "login/",
        ThrottledLoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Prometheus scrapes it (runs_app/views/metrics.py decides who may).
    path("metrics", metrics.metrics, name="metrics"),
    # Plans
    path("plans/", plans.plan_list, name="plans"),
    path("plans/new/", plans.plan_new, name="plan-new"),
    path("plans/new/json/", plans.plan_json, name="plan-new-json"),
    path("plans/validate/", plans.plan_validate, name="plan-validate"),
    path("plans/validate-json/", plans.plan_validate_json, name="plan-validate-json"),
    path("plans/<int:pk>/", plans.plan_detail, name="plan"),
    path("plans/<int:pk>/edit/", plans.plan_edit, name="plan-edit"),
    path("plans/<int:pk>/json/", plans.plan_json, name="plan-json"),
    path("plans/<int:pk>/revisions/", plans.plan_revisions, name="plan-history"),
    path("plans/<int:pk>/revisions/<int:number>/", plans.plan_revision, name="plan-revision"),
    path("plans/<int:pk>/diff/", plans.plan_diff, name="plan-diff"),
    path("plans/<int:pk>/dry-run/", plans.plan_dry_run, name="plan-start-dry-run"),
    path("plans/<int:pk>/apply/", plans.plan_apply, name="plan-start-apply"),
    # Runs
    path("runs/", runs.run_list, name="runs"),
    path("runs/<int:pk>/", runs.run_detail, name="run"),
    path("runs/<int:pk>/progress/", runs.run_progress, name="run-progress"),
    path("runs/<int:pk>/receipt/", runs.run_receipt, name="run-receipt-page"),
    path("runs/<int:pk>/diff/", runs.run_diff, name="run-diff-page"),
    path(
        "runs/<int:pk>/partitions/<int:partition_pk>/",
        runs.partition_detail,
        name="partition-detail",
    ),
    path(
        "runs/<int:pk>/approve/",
        runs.run_decide,
        {"decision": "approve"},
        name="run-decide-approve",
    ),
    path(
        "runs/<int:pk>/reject/", runs.run_decide, {"decision": "reject"}, name="run-decide-reject"
    ),
    path("runs/<int:pk>/abort/", runs.run_abort, name="run-abort-page"),
    path("runs/<int:pk>/pause/", runs.run_pause, name="run-pause-page"),
    path("runs/<int:pk>/resume/", runs.run_resume, name="run-resume-page"),
    path("runs/<int:pk>/replay/", runs.run_replay, name="run-replay-page"),
    path("approvals/", runs.approvals, name="approvals"),
    # Registry, search, audit
    path("job-kinds/", pages.kind_list, name="kinds"),
    path("job-kinds/<str:kind>/", pages.kind_detail, name="kind"),
    path("search/", pages.search, {"index": "docs"}, name="search"),
    path("search/assets/", pages.search, {"index": "assets"}, name="search-assets-page"),
    path("audit/", pages.audit, name="audit"),
]
