"""Plans: list, detail, the editor with live validation, JSON import and export, revisions."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import uuid
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, F, OuterRef, Subquery, Value, When
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from blueprints_app.models import JobKind
from blueprints_app.validation import Issue, ValidationResult, load_kinds, validate_plan
from blueprints_app.versions import kinds_at
from hxo_site import codes, parameters
from hxo_site.capabilities import has_capability
from hxo_site.errors import ServiceError
from hxo_site.net import client_ip
from runs_app import editor, policies, selectors, services
from runs_app import forms as f
from runs_app.editor.links import with_edit_links
from runs_app.models import PAUSED, Plan, PlanRevision, Run, RunState
from runs_app.views.common import (
    is_partial_request,
    page,
    paginate,
    query_without_page,
    refusal,
    require,
)

EDITOR = "hxo/plans/editor.html"
NEEDS_PLAN = "this page needs the hxo:plan capability"


# --- List and detail ---------------------------------------------------------------------------


@require("view")
@require_GET
def plan_list(request: HttpRequest) -> HttpResponse:
    last = Run.objects.filter(plan=OuterRef("pk")).order_by("-id")
    plans = (
        Plan.objects.select_related("created_by")
        .annotate(
            last_run_id=Subquery(last.values("id")[:1]),
            # The public state (`Run.public_state`): `paused` for a running run whose
            # pause flag is set.
            last_run_state=Subquery(
                last.annotate(
                    public=Case(
                        When(state=RunState.RUNNING, paused_at__isnull=False, then=Value(PAUSED)),
                        default=F("state"),
                    )
                ).values("public")[:1]
            ),
            last_run_mode=Subquery(last.values("mode")[:1]),
        )
        .order_by("-updated_at", "-id")
    )
    q = (parameters.text(request.GET, "q", max_length=200) or "").strip()
    if q:
        plans = plans.filter(name__icontains=q)
    context = {
        "plans": paginate(request, plans),
        "q": q,
        "query": query_without_page(request),
        "can_plan": has_capability(request.user, "plan"),
    }
    return page(request, "hxo/plans/list.html", context, partial="results")


@dataclasses.dataclass
class ApplyOption:
    """Whether the plan page offers Apply, and if not, why (shown to submitters only)."""

    available: bool
    dry_run: Run | None = None
    reason: str = ""
    needs_dry_run: list[str] = dataclasses.field(default_factory=list)


def apply_option(plan: Plan, revision: PlanRevision, kinds: dict[str, JobKind]) -> ApplyOption:
    """Whether the plan page offers Apply of `revision` (for a user holding hxo:submit): at
    once when none of its `kinds` requires a dry-run, else with its newest applicable dry-run
    when `policies.may_apply` lets it through; otherwise why not."""
    needs = policies.dry_run_required(revision, kinds)
    candidate = selectors.latest_dry_run(plan, revision)
    if not needs:
        return ApplyOption(available=True, needs_dry_run=needs)
    if candidate is None:
        return ApplyOption(
            available=False,
            needs_dry_run=needs,
            reason=f"{', '.join(needs)} must be dry-run and approved before it is applied: "
            f"start a dry-run of revision {revision.number}.",
        )
    decision = policies.may_apply(candidate, approval_required=True)
    if decision.allowed:
        return ApplyOption(available=True, dry_run=candidate, needs_dry_run=needs)
    if decision.code != codes.DRY_RUN_NOT_APPROVED:
        # What the apply service would refuse (used, expired, partly covered), in its words.
        return ApplyOption(
            available=False,
            needs_dry_run=needs,
            reason=f"Dry-run #{candidate.pk}: {decision.message}.",
        )
    # Not approved: this page names the dry-run (the run page says it in its own words).
    if candidate.state == RunState.AWAITING_APPROVAL:
        return ApplyOption(
            available=False,
            dry_run=candidate,
            needs_dry_run=needs,
            reason=f"Dry-run #{candidate.pk} is waiting for approval.",
        )
    return ApplyOption(
        available=False,
        needs_dry_run=needs,
        reason=f"Dry-run #{candidate.pk} is {candidate.state}; it needs an approval.",
    )


def new_key() -> str:
    """A fresh Idempotency-Key per rendered form: a double submit makes one run."""
    return uuid.uuid4().hex


def _valid_key(raw: str | None) -> str | None:
    if not raw or len(raw) > 200 or not re.fullmatch(r"[A-Za-z0-9_.:-]+", raw):
        return None
    return raw


# What the registry's evolution says about a stored revision (pinned versions, deprecations).
LIFECYCLE_CODES = {
    codes.KIND_SUNSET,
    codes.COMPONENT_SUNSET,
    codes.KIND_DEPRECATED,
    codes.COMPONENT_DEPRECATED,
    codes.KIND_VERSION_OUTDATED,
}


def plan_context(request: HttpRequest, plan: Plan) -> dict[str, Any]:
    revision = plan.revisions.select_related("author").get(number=plan.latest_number)
    # The revision runs under the kind versions it pins: show (and offer Apply by) those.
    kinds = kinds_at(revision.kind_versions)
    checked = validate_plan(revision.document, pinned_versions=revision.kind_versions)
    lifecycle = [i for i in [*checked.errors, *checked.warnings] if i.code in LIFECYCLE_CODES]
    can_submit = has_capability(request.user, "submit")
    runs = list(plan.runs.select_related("requested_by", "revision").order_by("-id")[:20])
    history = selectors.plan_history(plan, revision)
    latest = history.latest_states()
    graph_stages = [
        {"id": s["id"], "depends_on": s.get("depends_on", []), "state": latest.get(s["id"])}
        for s in revision.stages
    ]
    return {
        "plan": plan,
        "revision": revision,
        "kinds": kinds,
        "runs": runs,
        "history": history,
        "graph_stages": graph_stages,
        "graph_label": f"Stages of revision {revision.number}",
        "graph_note": f"Colours and states: run #{history.latest.pk}."
        if history.latest
        else "The plan has not run yet.",
        "can_plan": has_capability(request.user, "plan"),
        "can_submit": can_submit,
        "apply": apply_option(plan, revision, kinds) if can_submit else None,
        "key": new_key(),
        "non_idempotent": [s["id"] for s in revision.stages if s.get("non_idempotent")],
        "can_force_merge": has_capability(request.user, "force-merge"),
        "lifecycle": lifecycle,
        "lifecycle_blocked": any(i.code in services.SUNSET_CODES for i in lifecycle),
    }


@require("view")
@require_GET
def plan_detail(request: HttpRequest, pk: int) -> HttpResponse:
    plan = get_object_or_404(Plan.objects.select_related("created_by"), pk=pk)
    return page(request, "hxo/plans/detail.html", plan_context(request, plan))


def refused(
    request: HttpRequest, exc: ServiceError, *, back: str, title: str, plan: Plan | None = None
) -> HttpResponse:
    """A refusal: the refusal page, or only its panel for htmx (swapped where the form is).

    With `plan`, and for a user who may edit it, each error links to the editor at its field
    and the page offers "Edit the plan" (runs_app.editor.links)."""
    context: dict[str, Any] = {"refusal": refusal(exc), "back": back, "title": title}
    if plan is not None and has_capability(request.user, "plan"):
        context["refusal"]["errors"] = with_edit_links(plan.pk, exc.errors or [])
        context["edit"] = reverse("plan-edit", args=[plan.pk])
    return page(request, "hxo/refusal.html", context, partial="refusal", status=exc.status)


def done(request: HttpRequest, url: str) -> HttpResponse:
    if is_partial_request(request):
        return HttpResponseClientRedirect(url)
    return redirect(url)


@require("submit")
@require_POST
def plan_dry_run(request: HttpRequest, pk: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk)
    try:
        run = services.run_start_dry_run(
            plan=plan,
            actor=request.user,
            idempotency_key=_valid_key(request.POST.get("idempotency_key")),
            client_ip=client_ip(request),
        )
    except ServiceError as exc:
        back = reverse("plan", args=[plan.pk])
        return refused(request, exc, back=back, title="Dry-run refused", plan=plan)
    messages.success(request, f"Dry-run #{run.pk} started.")
    return done(request, reverse("run", args=[run.pk]))


@require("submit")
@require_POST
def plan_apply(request: HttpRequest, pk: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk)
    form = f.ApplyForm(request.POST)
    back = request.POST.get("back", "")
    if not back.startswith("/") or not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        back = reverse("plan", args=[plan.pk])
    if not form.is_valid():
        exc = ServiceError("the apply form is not valid", code="invalid_value", status=400)
        return refused(request, exc, back=back, title="Apply refused")
    try:
        run = services.run_apply(
            plan=plan,
            actor=request.user,
            dry_run_id=form.cleaned_data["dry_run"],
            force_rerun=form.cleaned_data["force_rerun"],
            idempotency_key=_valid_key(request.POST.get("idempotency_key")),
            client_ip=client_ip(request),
        )
    except ServiceError as exc:
        return refused(request, exc, back=back, title="Apply refused", plan=plan)
    messages.success(request, f"Apply run #{run.pk} started.")
    return done(request, reverse("run", args=[run.pk]))


# --- The editor --------------------------------------------------------------------------------


def blank_document() -> dict[str, Any]:
    document: dict[str, Any] = {"name": "", "description": "", "stages": []}
    document["stages"].append(editor.new_stage(document))
    return document


def editor_context(
    request: HttpRequest,
    *,
    plan: Plan | None,
    document: dict[str, Any],
    result: ValidationResult | None = None,
    problems: list[Issue] | None = None,
    focus: int | None = None,
    comment: str = "",
    kinds: dict[str, JobKind] | None = None,
    base: str = "",
) -> dict[str, Any]:
    """`base` is the digest of the revision the editor was opened on: saving sends it as
    If-Match, so a save over someone else's newer revision is refused, not a lost update."""
    kinds = kinds if kinds is not None else load_kinds()
    form = editor.plan_form(
        document,
        result or ValidationResult(),
        kinds=kinds,
        user=request.user,
        problems=problems or [],
        focus=focus,
    )
    if plan is None:
        action_url = reverse("plan-new")
        json_url = reverse("plan-new-json")
    else:
        action_url = reverse("plan-edit", args=[plan.pk])
        json_url = reverse("plan-json", args=[plan.pk])
    return {
        "plan": plan,
        "form": form,
        "action_url": action_url,
        "json_url": json_url,
        "comment": comment,
        "validated": result is not None,
        "base": base or (plan.latest_revision.digest if plan is not None else ""),
    }


def _service_issues(exc: ServiceError) -> ValidationResult:
    result = ValidationResult()
    for e in exc.errors:
        result.error(e.get("path", "plan"), e.get("code", ""), e.get("message", ""))
    if exc.code == codes.PRECONDITION_FAILED:
        result = ValidationResult()
        result.error(
            "plan",
            exc.code,
            f"Someone saved this plan since you opened it (it is now at revision "
            f"{exc.extra.get('revision')}). Open it again to see their change, then redo yours.",
        )
    elif not exc.errors:
        result.error("plan", exc.code, exc.message)
    return result


def _editor_post(request: HttpRequest, plan: Plan | None) -> HttpResponse:
    posted = editor.document_from_post(request.POST)
    kinds = load_kinds()
    document = posted.document
    editor.apply_structure_changes(document, posted.signatures, kinds)
    base = parameters.text(request.POST, "_base", max_length=64) or ""
    action = request.POST.get("_action", "save")
    focus = None
    if action not in ("save", "refresh"):
        focus = editor.apply_action(document, action)
    result = validate_plan(editor.for_validation(document), user=request.user)
    if action == "save" and not posted.problems:
        try:
            if plan is None:
                plan = services.plan_create(
                    actor=request.user,
                    document=editor.for_validation(document),
                    client_ip=client_ip(request),
                    comment=posted.comment,
                )
                messages.success(request, f"Plan “{plan.name}” created (revision 1).")
            else:
                before = plan.latest_number
                revision = services.plan_update(
                    plan=plan,
                    actor=request.user,
                    document=editor.for_validation(document),
                    client_ip=client_ip(request),
                    comment=posted.comment,
                    if_match=[base] if base else None,
                )
                if revision.number == before:
                    messages.info(request, "Nothing changed: no new revision was made.")
                else:
                    messages.success(request, f"Saved revision {revision.number}.")
            return redirect("plan", pk=plan.pk)
        except ServiceError as exc:
            result = _service_issues(exc)
    context = editor_context(
        request,
        plan=plan,
        document=document,
        result=result,
        problems=posted.problems,
        focus=focus,
        comment=posted.comment,
        kinds=kinds,
        base=base,
    )
    status = 400 if action == "save" else 200
    if action != "save" and is_partial_request(request):
        return render(request, f"{EDITOR}#stages_response", context)
    return render(request, EDITOR, context, status=status)


@require("plan")
@require_http_methods(["GET", "POST"])
def plan_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _editor_post(request, None)
    return render(request, EDITOR, editor_context(request, plan=None, document=blank_document()))


@require("plan")
@require_http_methods(["GET", "POST"])
def plan_edit(request: HttpRequest, pk: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk)
    if request.method == "POST":
        return _editor_post(request, plan)
    document = editor.editable_document(plan.latest_revision.document)
    return render(request, EDITOR, editor_context(request, plan=plan, document=document))


@require("plan")
@require_POST
def plan_validate(request: HttpRequest) -> HttpResponse:
    """Live validation: only error areas come back (out of band), never the inputs, except a
    stage whose kind, partitioner or executor just changed: its choices and params change."""
    posted = editor.document_from_post(request.POST)
    kinds = load_kinds()
    document = posted.document
    changed = editor.apply_structure_changes(document, posted.signatures, kinds)
    result = validate_plan(editor.for_validation(document), user=request.user)
    plan_id = parameters.optional_id(request.POST, "_plan")
    plan = Plan.objects.filter(pk=plan_id).first() if plan_id is not None else None
    context = editor_context(
        request, plan=plan, document=document, result=result, problems=posted.problems, kinds=kinds
    )
    context["changed"] = changed
    context["ids_changed"] = posted.rendered_ids != editor.stage_ids(document)
    return render(request, f"{EDITOR}#validation", context)


# --- JSON view: import and export ----------------------------------------------------------


def _pretty(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


@require("view")
@require_http_methods(["GET", "POST"])
def plan_json(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk) if pk is not None else None
    if plan is None and not has_capability(request.user, "plan"):
        raise PermissionDenied(NEEDS_PLAN)
    if request.method == "GET":
        document = plan.latest_revision.document if plan else blank_document()
        if plan is not None and request.GET.get("download"):
            response = JsonResponse(
                document, json_dumps_params={"indent": 2, "ensure_ascii": False}
            )
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", plan.name).strip("-") or "plan"
            response["Content-Disposition"] = (
                f'attachment; filename="{name}-r{plan.latest_number}.json"'
            )
            return response
        return _json_page(request, plan, _pretty(document))
    if not has_capability(request.user, "plan"):
        raise PermissionDenied(NEEDS_PLAN)
    # The revision the author started from, carried from the editor and back (If-Match).
    base = parameters.text(request.POST, "_base", max_length=64) or ""
    if "_stages" in request.POST:  # "View as JSON" from the editor, unsaved
        posted = editor.document_from_post(request.POST)
        return _json_page(request, plan, _pretty(editor.for_validation(posted.document)), base=base)
    form = f.JsonImportForm(request.POST, request.FILES)
    if not form.is_valid():
        text = request.POST.get("document", "")
        return _json_page(request, plan, text, form=form, status=400, base=base)
    text = form.cleaned_data["document"]
    document, problem = editor.parse_json_document(text)
    action = request.POST.get("_action", "validate")
    if problem is None and action == "edit" and isinstance(document, dict):
        editable = editor.editable_document(document)
        result = validate_plan(editor.for_validation(editable), user=request.user)
        return render(
            request,
            EDITOR,
            editor_context(request, plan=plan, document=editable, result=result, base=base),
        )
    if problem is None and action == "save":
        try:
            if plan is None:
                plan = services.plan_create(
                    actor=request.user,
                    document=document,
                    client_ip=client_ip(request),
                    comment=form.cleaned_data["comment"],
                )
            else:
                services.plan_update(
                    plan=plan,
                    actor=request.user,
                    document=document,
                    client_ip=client_ip(request),
                    comment=form.cleaned_data["comment"],
                    if_match=[base] if base else None,
                )
            messages.success(request, f"Saved revision {plan.latest_number} of “{plan.name}”.")
            return redirect("plan", pk=plan.pk)
        except ServiceError as exc:
            result = _service_issues(exc)
            return _json_page(request, plan, text, result=result, status=400, base=base)
    result = _json_result(document, problem, request)
    status = 200 if result.valid else 400
    return _json_page(request, plan, text, result=result, status=status, base=base)


def _json_result(document: Any, problem: Issue | None, request: HttpRequest) -> ValidationResult:
    if problem is not None:
        return ValidationResult(errors=[problem])
    return validate_plan(document, user=request.user)


def _json_page(
    request: HttpRequest,
    plan: Plan | None,
    text: str,
    *,
    form: f.JsonImportForm | None = None,
    result: ValidationResult | None = None,
    status: int = 200,
    base: str = "",
) -> HttpResponse:
    context = {
        "plan": plan,
        "base": base or (plan.latest_revision.digest if plan is not None else ""),
        "text": text,
        "form": form or f.JsonImportForm(initial={"document": text}),
        "result": result,
        "can_plan": has_capability(request.user, "plan"),
        "post_url": reverse("plan-json", args=[plan.pk]) if plan else reverse("plan-new-json"),
        "editor_url": reverse("plan-edit", args=[plan.pk]) if plan else reverse("plan-new"),
    }
    return render(request, "hxo/plans/json.html", context, status=status)


@require("plan")
@require_POST
def plan_validate_json(request: HttpRequest) -> HttpResponse:
    document, problem = editor.parse_json_document(request.POST.get("document", ""))
    result = _json_result(document, problem, request)
    return render(request, "hxo/plans/json.html#json_errors", {"result": result})


# --- Revisions ---------------------------------------------------------------------------------


@require("view")
@require_GET
def plan_revisions(request: HttpRequest, pk: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk)
    revisions = plan.revisions.select_related("author").order_by("-number")
    return page(
        request,
        "hxo/plans/revisions.html",
        {"plan": plan, "revisions": paginate(request, revisions)},
    )


@require("view")
@require_GET
def plan_revision(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk)
    revision = get_object_or_404(plan.revisions.select_related("author"), number=number)
    context = {"plan": plan, "revision": revision, "json": _pretty(revision.document)}
    return page(request, "hxo/plans/revision.html", context)


def unified(old: dict[str, Any], new: dict[str, Any], a: int, b: int) -> list[tuple[str, str]]:
    lines = difflib.unified_diff(
        _pretty(old).splitlines(),
        _pretty(new).splitlines(),
        fromfile=f"revision {a}",
        tofile=f"revision {b}",
        lineterm="",
        n=3,
    )
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            css = "meta"
        elif line.startswith("@@"):
            css = "hunk"
        elif line.startswith("+"):
            css = "add"
        elif line.startswith("-"):
            css = "del"
        else:
            css = "ctx"
        out.append((css, line))
    return out


@require("view")
@require_GET
def plan_diff(request: HttpRequest, pk: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=pk)
    b = parameters.optional_int(request.GET, "to", minimum=1)
    b = plan.latest_number if b is None else b
    a = parameters.optional_int(request.GET, "from", minimum=0)
    a = b - 1 if a is None else a
    found = {r.number: r for r in plan.revisions.select_related("author").filter(number__in=[a, b])}
    if a not in found or b not in found:
        raise Http404("no such revision")
    old, new = found[a], found[b]
    context = {
        "plan": plan,
        "old": old,
        "new": new,
        "diff": selectors.document_diff(old.document, new.document),
        "lines": unified(old.document, new.document, a, b),
        "numbers": list(range(plan.latest_number, 0, -1)),
    }
    return page(request, "hxo/plans/diff.html", context)
