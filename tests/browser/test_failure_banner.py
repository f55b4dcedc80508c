"""Issue 15 §2 in Chromium: a failed run's banner (which stage, its errors by code with
counts, what to do), progress bars coloured by state with the state in words, and a 0% bar
drawn as an empty track (Chromium's own look drew it as a full dark bar). Screenshots go to
test-results/failures/ for a look."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from runs_app import services
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import drain, partitioned
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, make_test_kinds, stage

pytestmark = pytest.mark.django_db(transaction=True)

SHOTS = RESULTS / "failures"
FAILED_RGB = "rgb(214, 69, 69)"  # --seg-failed
CANCELLED_RGB = "rgb(154, 163, 176)"  # --seg-cancelled
RUNNING_RGB = "rgb(240, 160, 32)"  # --seg-running
TRACK = (0xE3, 0xE6, 0xEB)  # --seg-pending


def shoot(page, name: str) -> None:
    assert page.console_errors == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def plan_of(operator, *stages):
    return services.plan_create(actor=operator, document={"name": "p", "stages": list(stages)})


def dark_share(png: bytes) -> float:
    """The share of a bar's pixels darker than mid-grey."""
    img = Image.open(io.BytesIO(png)).convert("L")
    pixels = list(img.get_flattened_data())
    return sum(1 for p in pixels if p < 110) / len(pixels)


def test_failed_run_banner_and_bars_coloured_by_state(
    open_page, operator, tmp_path: Path, settings
) -> None:
    make_test_kinds()
    settings.HXO_MAX_ATTEMPTS = 1
    work = tmp_path / "w"
    work.mkdir()
    plan = plan_of(
        operator,
        stage("load", work, items=4, kind=TEST_KIND_NOAPPROVAL, fail={"1": 9, "2": 9}),
        stage("index", work, items=2, kind=TEST_KIND_NOAPPROVAL, depends_on=["load"]),
    )
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert run.state == "failed"

    page = open_page()
    log_in(page, "otto")
    page.goto(f"/runs/{run.pk}/")
    banner = page.get_by_test_id("failure-banner")
    expect(banner).to_be_visible()
    expect(banner.locator('li[data-stage="load"]')).to_contain_text("failed")
    expect(banner).to_contain_text("executor_error")
    expect(banner).to_contain_text("injected failure of item")
    expect(banner.get_by_test_id("banner-edit-plan")).to_have_attribute(
        "href", f"/plans/{plan.pk}/edit/"
    )
    expect(banner.get_by_test_id("banner-replay")).to_be_visible()
    expect(banner).to_contain_text("index")  # cancelled because load failed
    # The banner is the first thing under the title, above the progress.
    assert banner.bounding_box()["y"] < page.locator("#progress").bounding_box()["y"]

    bars = page.get_by_test_id("stage-bar")
    expect(bars).to_have_count(2)
    load_bar, index_bar = bars.nth(0), bars.nth(1)
    assert load_bar.evaluate("el => getComputedStyle(el).appearance") == "none"
    assert load_bar.evaluate("el => getComputedStyle(el).color") == FAILED_RGB
    assert index_bar.evaluate("el => getComputedStyle(el).color") == CANCELLED_RGB
    # Legible without colour: the state in words beside the percentage.
    cells = page.locator("td.pb-cell")
    expect(cells.nth(0)).to_contain_text("failed")
    expect(cells.nth(1)).to_contain_text("cancelled")
    # The failed stage's bar is red where it is filled, not green.
    png = load_bar.screenshot()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    r, g, b = img.getpixel((img.width // 2, img.height // 2))
    assert r > 180 and g < 110 and b < 110, (r, g, b)
    shoot(page, "failed-run")

    # The replay button in the banner starts a replay of the failed partitions.
    banner.get_by_test_id("banner-replay").click()
    page.wait_for_url("**/runs/*/")
    child = run.replays.get()
    assert page.url.endswith(f"/runs/{child.pk}/")


def test_a_zero_percent_bar_is_an_empty_track(open_page, operator, tmp_path: Path) -> None:
    make_test_kinds()
    plan = plan_of(operator, stage("s", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL))
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    assert run.state == "running"  # nothing claimed: every bar at 0%

    page = open_page()
    log_in(page, "otto")
    page.goto(f"/runs/{run.pk}/")
    bar = page.get_by_test_id("stage-bar")
    expect(bar).to_have_attribute("value", "0")
    assert bar.evaluate("el => getComputedStyle(el).color") == RUNNING_RGB
    png = bar.screenshot()
    assert dark_share(png) < 0.35, dark_share(png)  # only the 1px border is darker
    img = Image.open(io.BytesIO(png)).convert("RGB")
    mid = img.getpixel((img.width // 2, img.height // 2))
    assert all(abs(a - b) <= 8 for a, b in zip(mid, TRACK, strict=True)), mid
    run_bar = page.locator("#run-progress-bar")
    png = run_bar.screenshot()
    assert dark_share(png) < 0.35
    shoot(page, "zero-percent")
