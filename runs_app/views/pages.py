"""Home, job kinds, search and audit pages."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from blueprints_app import selectors as registry_selectors
from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from hxo_site.capabilities import can_edit_registry, has_capability, user_capabilities
from runs_app import forms as f
from runs_app import policies, selectors
from runs_app import search as search_index
from runs_app.models import Plan, Run
from runs_app.models.engine import RUN_ACTIVE
from runs_app.views.common import filter_values, page, paginate, query_without_page, require

SEARCH_LIMIT = 50


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    context: dict[str, Any] = {
        "capabilities": user_capabilities(user),
        "can_view": has_capability(user, "view"),
        "can_plan": has_capability(user, "plan"),
    }
    if has_capability(user, "approve"):
        context["to_decide"] = [run for run, _ in policies.runs_to_decide(user)[0]][:10]
    if context["can_view"]:
        context["active_runs"] = list(
            Run.objects.filter(state__in=RUN_ACTIVE)
            .select_related("plan", "requested_by")
            .order_by("-id")[:10]
        )
        context["recent_runs"] = list(
            Run.objects.exclude(state__in=RUN_ACTIVE)
            .select_related("plan", "requested_by")
            .order_by("-id")[:10]
        )
        context["plans"] = list(Plan.objects.order_by("-updated_at", "-id")[:8])
    return page(request, "hxo/home.html", context)


# --- Job kinds --------------------------------------------------------------------------------


@require("view")
@require_GET
def kind_list(request: HttpRequest) -> HttpResponse:
    kinds = list(JobKind.objects.order_by("kind"))
    context = {
        "kinds": kinds,
        "timeline": registry_selectors.registry_timeline(kinds),
        "can_edit": can_edit_registry(request.user),
    }
    return page(request, "hxo/kinds/list.html", context)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@require("view")
@require_GET
def kind_detail(request: HttpRequest, kind: str) -> HttpResponse:
    row = JobKind.objects.filter(kind=kind).first()
    if row is None:
        raise Http404("no such job kind")
    partitioners = []
    for name in row.partitioners:
        component = PARTITIONERS.get(name)
        schema = component.get_params_schema() if component else None
        partitioners.append(
            {
                "name": name,
                "registered": component is not None,
                "description": getattr(component, "description", ""),
                **registry_selectors.component_rows_lifecycle(component),
                "params": _schema_rows(schema or {}),
                "schema": _pretty(schema) if schema is not None else "",
            }
        )
    executors = [
        {
            "name": name,
            "registered": name in EXECUTORS,
            "description": getattr(EXECUTORS.get(name), "description", ""),
            "idempotent": getattr(EXECUTORS.get(name), "idempotent", True),
            **registry_selectors.component_rows_lifecycle(EXECUTORS.get(name)),
        }
        for name in row.executors
    ]
    admin_url = ""
    if can_edit_registry(request.user):
        try:
            admin_url = reverse("admin:blueprints_app_jobkind_change", args=[row.pk])
        except NoReverseMatch:
            admin_url = ""
    context = {
        "kind": row,
        "partitioners": partitioners,
        "executors": executors,
        "input_schema": _pretty(row.input_schema),
        "output_schema": _pretty(row.output_schema),
        "plans": selectors.plans_using_kind(row.kind),
        "admin_url": admin_url,
        "versions": registry_selectors.kind_versions(row),
        "now": timezone.now(),
    }
    return page(request, "hxo/kinds/detail.html", context)


def _schema_rows(schema: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    required = set(schema.get("required") or [])
    rows = []
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        typ = prop.get("type", "")
        if "enum" in prop:
            typ = f"{typ} · one of {', '.join(map(str, prop['enum']))}" if prop["enum"] else typ
        rows.append(
            {
                "name": prefix + name,
                "type": typ,
                "required": name in required,
                "default": _pretty(prop["default"]) if "default" in prop else "",
                "description": prop.get("description", "") or prop.get("title", ""),
            }
        )
        if prop.get("type") == "object" and isinstance(prop.get("properties"), dict):
            rows.extend(_schema_rows(prop, prefix=f"{prefix}{name}."))
    return rows


# --- Search -----------------------------------------------------------------------------------


@require("view")
@require_GET
def search(request: HttpRequest, index: str = "docs") -> HttpResponse:
    if index not in ("docs", "assets"):
        raise Http404
    form = f.SearchForm(request.GET or None)
    hits: list[dict[str, Any]] = []
    error = ""
    q = ""
    if filter_values(form).get("q"):
        q = form.cleaned_data["q"]
        finder = search_index.search_docs if index == "docs" else search_index.search_assets
        try:
            hits = finder(q, SEARCH_LIMIT)
        except search_index.SearchError as exc:
            error = str(exc)
    context = {"form": form, "index": index, "hits": hits, "q": q, "error": error}
    return page(request, "hxo/search.html", context, partial="results")


# --- Audit ------------------------------------------------------------------------------------


@require("audit")
@require_GET
def audit(request: HttpRequest) -> HttpResponse:
    actions, types = selectors.audit_filter_choices()
    form = f.AuditFilterForm(request.GET or None, actions=actions, object_types=types)
    filters = {k: v for k, v in filter_values(form).items() if v not in (None, "")}
    events = selectors.audit_events(**filters).select_related("actor")
    context = {
        "form": form,
        "events": paginate(request, events),
        "query": query_without_page(request),
        "filtered": bool(filters),
    }
    return page(request, "hxo/audit.html", context, partial="results")
