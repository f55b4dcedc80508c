"""Issue 15 §4 in the browser: pausing and resuming a run from its page (htmx buttons under
the site's CSP), the pause shown in the progress partial, and the throttle's figures.
Screenshots go to test-results/pause/ for a look."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import Run
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import partitioned
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, make_test_kinds, stage

pytestmark = pytest.mark.django_db(transaction=True)

SHOTS = RESULTS / "pause"


def shoot(page, name: str) -> None:
    assert page.console_errors == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_an_operator_pauses_and_resumes_a_run_from_its_page(
    open_page, operator, viewer, tmp_path, settings
) -> None:
    settings.HXO_MAX_CONCURRENCY = 4
    make_test_kinds()
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "long backfill",
            "stages": [stage("a", tmp_path, items=5, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    services.run_throttle(run=run, actor=operator, concurrency=1, min_interval_ms=500)

    page = open_page()
    log_in(page, operator.username)
    page.goto(f"/runs/{run.pk}/")
    expect(page.get_by_test_id("resume")).to_have_count(0)
    expect(page.get_by_test_id("run-control")).to_contain_text(
        "Throttled: 1 of 4 drainers, at least 500 ms between partitions"
    )
    page.get_by_test_id("pause").click()
    expect(page.get_by_test_id("paused")).to_contain_text("Paused since")
    expect(page.get_by_test_id("paused")).to_contain_text(f"by {operator.username}")
    expect(page.get_by_test_id("resume")).to_be_visible()
    expect(page.get_by_test_id("pause")).to_have_count(0)
    assert Run.objects.get(pk=run.pk).is_paused
    shoot(page, "paused")

    page.get_by_test_id("resume").click()
    expect(page.get_by_test_id("pause")).to_be_visible()
    expect(page.get_by_test_id("paused")).to_have_count(0)
    expect(page.get_by_test_id("run-control")).to_contain_text("in 1 pause")
    assert not Run.objects.get(pk=run.pk).is_paused
    shoot(page, "resumed")

    # A viewer sees the pause, never the buttons.
    services.run_pause(run=run, actor=operator)
    other = open_page()
    log_in(other, viewer.username)
    other.goto(f"/runs/{run.pk}/")
    expect(other.get_by_test_id("paused")).to_be_visible()
    for test_id in ("pause", "resume"):
        expect(other.get_by_test_id(test_id)).to_have_count(0)
