"""The review page of a dry-run of each kind (issue 14: "screens are checked by eye"): one
example plan per kind is dry-run against a copy of the demo workspace, its review opened as
the approver, checked for what a screenshot cannot prove (the kind's change set, nothing wider
than the window) and saved in test-results/review-<kind>.png to be looked at. deploy.migrate's
is taken by test_review.py's walk-through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import RunState
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import drain
from tests.runs_app.kinds.conftest import EXAMPLES, demo_copy, scratch  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

# kind -> (example plan, text its change-summary row shows)
KINDS = {
    "deploy.pack": ("pack-backend-by-filesize", "archives to write"),
    "deploy.prime": ("prime-registry-by-dag-depth", "modules"),
    "assets.index": ("assets-index-by-bucket", "assets"),
    "assets.stage": ("assets-stage-by-filesize", "assets to copy"),
    "docs.index": ("docs-index-by-route", "pages new"),
}


def test_the_review_of_each_kind_fits_the_window_and_is_saved_for_the_eye(
    open_page,
    operator,
    approver,
    demo_copy,  # noqa: F811
    settings: Any,
) -> None:
    page = open_page(width=1280, height=1000)
    log_in(page, "april")
    RESULTS.mkdir(exist_ok=True)
    for kind, (example, words) in KINDS.items():
        document = json.loads((EXAMPLES / "plans" / f"{example}.json").read_text())
        assert {s["kind"] for s in document["stages"]} == {kind}
        plan = services.plan_create(actor=operator, document=document)
        run = drain(services.run_start_dry_run(plan=plan, actor=operator))
        assert run.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED), run.error
        page.goto(f"/runs/{run.pk}/")
        summary = page.get_by_test_id("change-summary")
        expect(summary.locator("tbody tr").first).to_contain_text(words)
        if kind == "assets.index":  # an index copies nothing: the total must not say so
            expect(page.get_by_test_id("change-total")).not_to_contain_text("to copy")
        # Nothing overflows the window sideways: wide tables scroll inside their wrapper.
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (kind, overflow)
        page.screenshot(path=str(RESULTS / f"review-{kind}.png"), full_page=True)
    # A narrow window (a phone held upright) still has no sideways scroll on the page itself.
    page.set_viewport_size({"width": 420, "height": 900})
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, ("narrow", overflow)
    page.screenshot(path=str(RESULTS / "review-docs.index-narrow.png"), full_page=True)
    assert page.console_errors == []


def test_the_examples_cover_every_kind_but_migrate() -> None:
    from blueprints_app.contract import contract_kinds

    kinds = {k["kind"] if isinstance(k, dict) else k for k in contract_kinds()}
    assert kinds - {"deploy.migrate"} <= set(KINDS), kinds
    assert all(Path(EXAMPLES / "plans" / f"{e}.json").exists() for e, _ in KINDS.values())
