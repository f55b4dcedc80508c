"""What every dashboard view shares: capability checks, htmx-aware rendering, refusals."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers

from hxo_site import codes, parameters
from hxo_site.capabilities import has_capability
from hxo_site.errors import ServiceError

V = TypeVar("V", bound=Callable[..., HttpResponse])

PAGE_SIZE = 50


def require(capability: str) -> Callable[[V], V]:
    """Log in first, then the capability: anonymous users go to the login page, users
    without the capability get 403."""

    def decorator(view: V) -> V:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_capability(request.user, capability):
                raise PermissionDenied(f"this page needs the hxo:{capability} capability")
            return view(request, *args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator


def is_partial_request(request: HttpRequest) -> bool:
    """An htmx request for a fragment (a boosted request wants the whole page)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    *,
    partial: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """Render `template`, or only its `{% partialdef %}` named `partial` when htmx asks for
    it (an `HX-Request` header); the full page is always the answer without htmx, and the
    response varies on `HX-Request` so a cache never serves one for the other."""
    name = f"{template}#{partial}" if partial and is_partial_request(request) else template
    response = render(request, name, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def filter_values(form: forms.Form) -> dict[str, Any]:
    """The cleaned values of a bound filter form ({} when unbound), or ParameterError (a 400
    page naming the parameter) for the first one given twice or not valid: a bad filter never
    falls back to listing every row."""
    if not form.is_bound:
        return {}
    for problem in parameters.form_repeats(form.data, list(form.fields)):
        raise problem
    if not form.is_valid():
        name, errors = next(iter(form.errors.items()))
        raise parameters.ParameterError(name, str(errors[0]))
    return form.cleaned_data


def paginate(request: HttpRequest, items: Any, per_page: int = PAGE_SIZE) -> Page:
    # One parser for numbers in URLs: "٣" is not page 3, "²" not page 1; a repeat is refused.
    raw = parameters.one(request.GET, "page")
    number = 1 if raw is None else parameters.parse_int(raw, name="page", minimum=1)
    return Paginator(items, per_page).get_page(number)


def query_without_page(request: HttpRequest) -> str:
    """The current filters as a query string, for pagination links."""
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


# --- Refusals in plain words -----------------------------------------------------------------

PLAIN: dict[str, str] = {
    codes.DRY_RUN_REQUIRED: (
        "This plan has a stage whose job kind must be dry-run first. Start a dry-run, have it "
        "approved by someone else, then apply that dry-run."
    ),
    codes.DRY_RUN_NOT_APPROVED: (
        "The dry-run has not been approved yet. An approver has to approve it before it can be "
        "applied."
    ),
    codes.STALE_PLAN: (
        "Something changed since the dry-run was approved: the plan, the files it reads, or a "
        "job kind's version. What was approved is no longer what would run, so nothing was "
        "applied. Start a new dry-run and have it approved."
    ),
    codes.FORCE_MERGE_REQUIRED: (
        "This plan has a non-idempotent stage. Running it needs the hxo:force-merge "
        "capability, which you do not have. Ask someone who holds it, or make the stage "
        "idempotent."
    ),
    codes.SELF_APPROVAL_FORBIDDEN: (
        "Four-eyes rule: someone who wrote none of the plan's revisions since its last "
        "successful apply, and who did not request the dry-run, has to decide."
    ),
    codes.APPROVAL_USED: (
        "This approval was already used by an apply. An approval covers one apply; a replay "
        "of that apply finishes its work. For another apply, start a new dry-run and have it "
        "approved."
    ),
    codes.APPROVAL_EXPIRED: (
        "The approval is too old to cover an apply (HXO_APPROVAL_TTL_HOURS). Start a new "
        "dry-run and have it approved."
    ),
    codes.APPROVAL_INCOMPLETE: (
        "The approvals cover only some of the plan's partitions (a replayed dry-run holds only "
        "the partitions it replayed), and an apply runs all of them. Start a new dry-run of "
        "the whole plan."
    ),
    codes.REPLAY_IN_PROGRESS: "This run is already being replayed: wait for that replay.",
    codes.ALREADY_REPLAYED: (
        "This run was already replayed. If that replay failed too, replay the replay."
    ),
    codes.PERMISSION_DENIED: "You do not have the capability this needs.",
    codes.INVALID_STATE: "The run is not in a state that allows this any more.",
    codes.ALREADY_DECIDED: "You have already decided on this dry-run.",
    codes.STALE_REVIEW: (
        "Your decision was made on a review that is not this dry-run's current one (the form "
        "was opened for another digest). Nothing was recorded: open the review again, read "
        "it, and decide there."
    ),
    codes.VALIDATION_FAILED: "The plan is not valid: fix the errors shown.",
    codes.NOTHING_TO_REPLAY: "There is nothing to replay: no partition failed or was cancelled.",
}


def refusal(exc: ServiceError) -> dict[str, Any]:
    """A service refusal for a template: plain words, the service's own detail, the diff."""
    return {
        "code": exc.code,
        "plain": PLAIN.get(exc.code, ""),
        "message": exc.message,
        "errors": exc.errors,
        "diff": exc.extra.get("diff"),
        "status": exc.status,
    }
