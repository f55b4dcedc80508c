"""Runs: list, the run page (dry-run review and live monitoring), its partials, and actions.

Query counts of the run page and its partials do not depend on the number of partitions:
progress comes from the stage counters, the partition table is one page, the timeline is
sampled (selectors.run_timeline).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from blueprints_app.models import JobKind
from hxo_site import parameters
from hxo_site.capabilities import has_capability
from hxo_site.errors import ServiceError
from hxo_site.net import client_ip
from runs_app import forms as f
from runs_app import policies, selectors, services
from runs_app.editor.links import with_edit_links
from runs_app.models import (
    Approval,
    Partition,
    Run,
    RunMode,
    RunState,
    StageState,
)
from runs_app.views.common import (
    filter_values,
    page,
    paginate,
    query_without_page,
    require,
)
from runs_app.views.plans import done, new_key, refused

DETAIL = "hxo/runs/detail.html"
PARTITIONS_PER_PAGE = 25


def get_run(pk: int) -> Run:
    try:
        return selectors.run_with_stages(pk)
    except Run.DoesNotExist:
        raise Http404("no such run") from None


@require("view")
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    form = f.RunFilterForm(request.GET or None)
    data = filter_values(form)
    runs = selectors.runs(
        plan=data.get("plan"), state=data.get("state"), mode=data.get("mode")
    ).select_related("plan", "revision", "requested_by")
    context = {"form": form, "runs": paginate(request, runs), "query": query_without_page(request)}
    return page(request, "hxo/runs/list.html", context, partial="results")


# --- What the current user may do on a run ------------------------------------------------


@dataclasses.dataclass
class RunActions:
    """Computed in the view, never in a template: a partial shows exactly what its page shows."""

    decide: bool = False  # the approve/reject form is shown
    decide_blocked: str = ""  # ...disabled, with this reason
    my_decision: Approval | None = None
    apply: bool = False
    apply_blocked: str = ""
    abort: bool = False
    pause: bool = False
    resume: bool = False
    replay: bool = False
    replay_blocked: str = ""

    @property
    def any(self) -> bool:
        return (
            any(
                (
                    self.decide,
                    self.apply,
                    self.apply_blocked,
                    self.abort,
                    self.pause,
                    self.resume,
                    self.replay,
                    self.replay_blocked,
                )
            )
            or self.my_decision is not None
        )

    @property
    def besides_decision(self) -> bool:
        """Anything but the decision to show: the decision has its own card after the
        review's evidence (templates/hxo/runs/detail.html, `#decision`)."""
        return dataclasses.replace(self, decide=False, decide_blocked="", my_decision=None).any


def run_actions(user: Any, run: Run) -> RunActions:
    """What `user` may do on `run`, as the policies decide it (the services refuse the same).

    `run` with its stages, approvals, plan and revision loaded (`selectors.run_with_stages`):
    then only the policies' own queries are made (four-eyes, the approval checks of an
    applicable dry-run, the replay of a replayable one)."""
    actions = RunActions()
    if run.mode == RunMode.DRY_RUN and has_capability(user, "approve"):
        actions.my_decision = next((a for a in run.approvals.all() if a.user_id == user.pk), None)
        decide = policies.may_decide(user, run, mine=actions.my_decision)
        actions.decide, actions.decide_blocked = decide.shown, decide.reason
    if run.mode == RunMode.DRY_RUN and has_capability(user, "submit"):
        apply = policies.may_apply(
            run,
            approval_required=run.requires_approval,
            latest_number=run.plan.latest_number,
        )
        actions.apply, actions.apply_blocked = apply.allowed, apply.reason
    actions.abort = policies.may_abort(user, run).allowed
    actions.pause = policies.may_pause(user, run).allowed
    actions.resume = policies.may_resume(user, run).allowed
    replay = policies.may_replay(user, run, policies.ReplayScope.of_stages(run.run_stages.all()))
    actions.replay, actions.replay_blocked = replay.allowed, replay.reason
    return actions


# --- The run page and its partials ----------------------------------------------------------


def _filters(
    request: HttpRequest, run: Run
) -> tuple[f.PartitionFilterForm, str | None, str | None]:
    stage_ids = [s.stage_id for s in run.run_stages.all()]
    form = f.PartitionFilterForm(request.GET or None, stage_ids=stage_ids)
    data = filter_values(form)
    return form, data.get("stage") or None, data.get("state") or None


def partitions_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    form, stage, state = _filters(request, run)
    rows = selectors.partition_rows(run, stage=stage, state=state)
    return {
        "filter_form": form,
        "partitions": paginate(request, rows, PARTITIONS_PER_PAGE),
        "query": query_without_page(request),
        "partitions_url": reverse("run", args=[run.pk]),
    }


def progress_context(run: Run) -> dict[str, Any]:
    stages = sorted(run.run_stages.all(), key=lambda s: s.position)
    errors = selectors.stage_errors(stages)
    progress = [selectors.stage_progress(s, errors.get(s.pk)) for s in stages]
    totals = selectors.run_totals(run)
    done = totals.get("succeeded", 0) + totals.get("failed", 0) + totals.get("reused", 0)
    done += totals.get("cancelled", 0)
    total = totals.get("total", 0)
    return {
        "progress": progress,
        "totals": totals,
        "percent": int(100 * done / total) if total else (100 if run.is_finished else 0),
        "timeline": selectors.run_timeline(run),
        "polling": not run.is_finished,
        "partitioning": selectors.partitioning_progress(run, stages),
        "control": selectors.run_control(run),
    }


def failure_banner(
    run: Run, progress: list[dict[str, Any]], actions: RunActions, may_edit: bool
) -> dict[str, Any] | None:
    """What the top of a failed run's page says (issue 15 §2): the stages that failed, each
    with its errors grouped by code (count, permanent, the first message: `stage_progress`'s
    `errors_by_code`), the stages cancelled because of them, and what to do: edit the plan
    (when `may_edit`) and replay the failed partitions (when the policy allows it, the same
    decision as the Actions section). None for a run that did not fail in its stages (one
    that failed before any partition ran says so in its own alert, `run.error`)."""
    if run.state != RunState.FAILED:
        return None
    failed = [s for s in progress if s["state"] == StageState.FAILED]
    if not failed:
        return None
    return {
        "failed": failed,
        "cancelled": [s for s in progress if s["state"] == StageState.CANCELLED],
        "edit_url": reverse("plan-edit", args=[run.plan_id]) if may_edit else "",
        "replay": actions.replay,
        "replay_blocked": actions.replay_blocked,
    }


@require("view")
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_run(pk)
    context: dict[str, Any] = {"run": run, **partitions_context(request, run)}
    if request.htmx and not request.htmx.boosted:
        return page(request, DETAIL, context, partial="partitions")
    context.update(progress_context(run))
    context.update(
        {
            "actions": run_actions(request.user, run),
            "decision_form": f.DecisionForm(),
            "approvals": list(run.approvals.all()),
            "applies": list(run.applies.order_by("-id").only("id", "state", "dry_run_id")),
            "replays": list(run.replays.order_by("-id").only("id", "state", "parent_id")),
            "key": new_key(),
            "is_dry_run": run.mode == RunMode.DRY_RUN,
            "review": selectors.review_totals(run) if run.mode == RunMode.DRY_RUN else None,
            "change_summary": selectors.change_summary(run),
            "last_applied": services.last_applied_run(run.plan, before=run)
            if run.mode == RunMode.DRY_RUN
            else None,
        }
    )
    # The findings include the PostgreSQL row estimates the change summary read.
    context["findings"] = (
        selectors.run_findings(run, context["change_summary"])
        if run.mode == RunMode.DRY_RUN
        else None
    )
    context["failure"] = failure_banner(
        run, context["progress"], context["actions"], has_capability(request.user, "plan")
    )
    if run.error and has_capability(request.user, "plan"):
        # A run that failed before anything ran (partitioning: a path, a param) links each
        # error to the editor at its field, as a refused request does (runs_app.editor.links).
        context["error_links"] = with_edit_links(run.plan_id, run.error.get("errors") or [])
        context["edit_url"] = reverse("plan-edit", args=[run.plan_id])
    return page(request, DETAIL, context)


@require("view")
@require_GET
def run_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The polled fragment. When the run has ended, polling stops (286) and the page reloads
    once, so the actions, the receipt and the table show the final state."""
    run = get_run(pk)
    context = {"run": run, **progress_context(run)}
    response = render(request, f"{DETAIL}#progress", context)
    if run.is_finished and request.htmx:
        stop = HttpResponseStopPolling(response.content)
        stop["HX-Refresh"] = "true"
        return stop
    return response


@require("view")
@require_GET
def run_receipt(request: HttpRequest, pk: int) -> HttpResponse:
    thorough = parameters.choice(request.GET, "thorough", ("0", "1")) == "1"
    run = get_run(pk)
    receipt = selectors.receipt(run, thorough=thorough) if run.merkle_root else None
    return page(
        request, "hxo/runs/receipt.html", {"run": run, "receipt": receipt}, partial="receipt"
    )


@require("view")
@require_GET
def run_diff(request: HttpRequest, pk: int) -> HttpResponse:
    """The dry-run against the last applied run of its plan (or `?against=<run>`)."""
    run = get_run(pk)
    against_id = parameters.optional_id(request.GET, "against")
    if against_id is not None:
        against = get_run(against_id)
        if against.plan_id != run.plan_id:
            raise Http404("not a run of the same plan")
    else:
        last = services.last_applied_run(run.plan, before=run)
        against = get_run(last.pk) if last is not None else None
    diff = selectors.diff_runs(run, against) if against is not None else None
    if diff is not None and run.mode != getattr(against, "mode", run.mode):
        diff = manifest_changes(diff)
    context = {"run": run, "against": against, "diff": diff}
    return page(request, "hxo/runs/diff.html", context, partial="diff")


MANIFEST_KEYS = ("cas_id", "inputs", "fingerprints")


def manifest_changes(diff: dict[str, Any]) -> dict[str, Any]:
    """A dry-run against an apply: outputs and states always differ (previews are not
    results), so only what would run is compared: content ids, inputs and files."""
    stages = []
    for entry in diff["stages"]:
        changed = []
        for p in entry.get("changed_partitions", []):
            if p["change"] != "changed":
                changed.append(p)
                continue
            kept = {k: v for k, v in p.items() if k in MANIFEST_KEYS}
            if kept:
                changed.append({"index": p["index"], "change": "changed", **kept})
        if "changed_partitions" in entry:
            entry = {**entry, "changed_partitions": changed}
            if entry["change"] == "changed" and not changed:
                entry["change"] = "same"
        stages.append(entry)
    return {**diff, "stages": stages}


@require("view")
@require_GET
def partition_detail(request: HttpRequest, pk: int, partition_pk: int) -> HttpResponse:
    partition = get_object_or_404(
        Partition.objects.select_related("stage", "run", "run__plan", "reused_from"),
        pk=partition_pk,
        run_id=pk,
    )
    context = {"run": partition.run, "p": partition, "log": selectors.partition_log(partition)}
    return page(request, "hxo/runs/partition.html", context, partial="detail")


# --- Actions --------------------------------------------------------------------------------


def _back(run: Run) -> str:
    return reverse("run", args=[run.pk])


@require("approve")
@require_POST
def run_decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("revision", "plan"), pk=pk)
    form = f.DecisionForm(request.POST)
    valid = form.is_valid()
    comment = form.cleaned_data["comment"] if valid else request.POST.get("comment", "")
    # The page's form always carries the digest it was rendered for: a form without one is
    # not the review's (the API may leave it out; the page may not).
    kwargs: dict[str, Any] = {
        "comment": comment,
        "client_ip": client_ip(request),
        "digest": request.POST.get("digest") or "-",
    }
    if decision == "approve":
        kwargs["acknowledge_findings"] = valid and form.cleaned_data["acknowledge_findings"]
    service = services.run_approve if decision == "approve" else services.run_reject
    try:
        run = service(run=run, actor=request.user, **kwargs)
    except ServiceError as exc:
        return refused(request, exc, back=_back(run), title="Decision refused")
    verb = "Approved" if decision == "approve" else "Rejected"
    messages.success(request, f"{verb} dry-run #{run.pk}.")
    return done(request, _back(run))


def _run_action(
    request: HttpRequest, pk: int, service: Any, *, refused_title: str, success: str
) -> HttpResponse:
    """POST of a run button: `service(run=, actor=, client_ip=)`, then back to the run with
    `success` (formatted with the run's pk), or the refusal page titled `refused_title`."""
    run = get_object_or_404(Run, pk=pk)
    try:
        service(run=run, actor=request.user, client_ip=client_ip(request))
    except ServiceError as exc:
        return refused(request, exc, back=_back(run), title=refused_title)
    messages.success(request, success.format(pk=run.pk))
    return done(request, _back(run))


@require("abort")
@require_POST
def run_abort(request: HttpRequest, pk: int) -> HttpResponse:
    return _run_action(
        request, pk, services.run_abort, refused_title="Abort refused", success="Run #{pk} aborted."
    )


@require("abort")
@require_POST
def run_pause(request: HttpRequest, pk: int) -> HttpResponse:
    return _run_action(
        request,
        pk,
        services.run_pause,
        refused_title="Pause refused",
        success="Run #{pk} paused: running partitions finish, no new one starts.",
    )


@require("abort")
@require_POST
def run_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _run_action(
        request,
        pk,
        services.run_resume,
        refused_title="Resume refused",
        success="Run #{pk} resumed.",
    )


@require("replay")
@require_POST
def run_replay(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("plan"), pk=pk)
    try:
        child = services.run_replay(run=run, actor=request.user, client_ip=client_ip(request))
    except ServiceError as exc:
        return refused(request, exc, back=_back(run), title="Replay refused")
    messages.success(
        request, f"Replay run #{child.pk} started for the failed partitions of #{run.pk}."
    )
    return done(request, _back(child))


# --- Approvals inbox ------------------------------------------------------------------------


@require("approve")
@require_GET
def approvals(request: HttpRequest) -> HttpResponse:
    """The inbox: dry-runs waiting for the user's decision with how long they waited, who
    asked, what they would change and their highest SQL finding; `?kind=` keeps those with a
    stage of that kind (a registered kind, else 400 naming the parameter)."""
    kinds = sorted(JobKind.objects.values_list("kind", flat=True))
    kind = parameters.choice(request.GET, "kind", kinds)
    mine, others = policies.runs_to_decide(request.user)
    context = {
        "mine": selectors.approvals_inbox(mine, kind=kind),
        "others": selectors.approvals_inbox(others, kind=kind),
        "kinds": kinds,
        "kind": kind,
    }
    return page(request, "hxo/approvals.html", context)
