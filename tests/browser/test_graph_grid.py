"""Issue 15 §3 in the browser: the plan page's stage graph and history grid, and the editor's
graph redrawn by live validation, under the site's CSP (a violation is a console error).
Screenshots go to test-results/graph/ for a look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from runs_app import services
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
SHOTS = RESULTS / "graph"


def shoot(page, name: str) -> None:
    """A full-page screenshot, after the page's checks: Playwright leaves empty `style`
    attributes behind, which htmx's settling would then copy (a CSP violation of the test's
    making), so nothing is swapped on a page after its screenshot."""
    assert page.console_errors == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_plan_page_graph_grid_and_editor_graph(open_page, operator) -> None:
    document = json.loads((EXAMPLES / "release-demo.json").read_text())
    document["description"] = (
        "A **whole release** of the demo, see [the runbook](https://example.org/runbook).\n\n"
        "<script>alert('x')</script> [bad](javascript:alert(1))"
    )
    plan = services.plan_create(actor=operator, document=document)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    page = open_page()
    log_in(page, "otto")
    page.goto(f"/plans/{plan.pk}/")

    graph = page.locator("svg#plan-graph")
    expect(graph).to_be_visible()
    expect(graph.locator("g.gnode")).to_have_count(5)
    expect(graph.locator("path.gedge")).to_have_count(2)
    for target in ("registry", "bytecode"):
        expect(graph.locator(f'path.gedge[data-from="pack"][data-to="{target}"]')).to_have_count(1)
    # Coloured by the dry-run's states, and the state said in words in each node.
    pack = graph.locator('g.gnode[data-stage="pack"]')
    expect(pack).to_have_attribute("data-state", "succeeded")
    expect(pack.locator("text.gstate")).to_have_text("succeeded")
    fill = pack.locator("rect.gbox").evaluate("el => getComputedStyle(el).fill")
    assert fill == "rgb(214, 240, 223)", fill  # the CSS class coloured it, CSP allowing
    # Waves left to right: pack before registry.
    x_pack = pack.bounding_box()["x"]
    x_registry = graph.locator('g.gnode[data-stage="registry"]').bounding_box()["x"]
    assert x_pack < x_registry

    grid = page.get_by_test_id("history-grid")
    cells = grid.locator("a.hcell[data-stage]")
    expect(cells).to_have_count(5)
    expect(grid.locator(f'a.hcell[data-run="{dry.pk}"][data-stage="docs"]')).to_have_attribute(
        "data-state", "succeeded"
    )
    description = page.get_by_test_id("plan-description")
    expect(description.locator("strong")).to_have_text("whole release")
    expect(description.locator("a")).to_have_count(1)  # the javascript: link is plain text
    expect(description).to_contain_text("<script>alert('x')</script>")
    shoot(page, "plan")

    # A grid cell opens its run, filtered to the stage.
    grid.locator(f'a.hcell[data-run="{dry.pk}"][data-stage="docs"]').click()
    page.wait_for_url(f"**/runs/{dry.pk}/?stage=docs")

    page.goto(f"/plans/{plan.pk}/edit/")
    editor_graph = page.locator("svg#editor-graph-svg")
    expect(editor_graph.locator("g.gnode")).to_have_count(5)
    expect(editor_graph.locator("path.gedge")).to_have_count(2)
    # Live validation redraws it: a new id for the docs stage shows up as a node.
    field = page.locator("#f-stages-4-id")
    field.fill("docs-renamed")
    expect(editor_graph.locator('g.gnode[data-stage="docs-renamed"]')).to_have_count(1)
    expect(page.locator('svg#editor-graph-svg g.gnode[data-stage="docs"]')).to_have_count(0)
    # ... and the field being typed in is still the user's.
    expect(field).to_have_value("docs-renamed")
    shoot(page, "editor-after-rename")

    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"/plans/{plan.pk}/")
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 392, wide  # the graph and the grid scroll inside their boxes
    shoot(page, "plan-phone")
    assert page.console_errors == []
