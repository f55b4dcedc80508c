"""Every page of the dashboard in the browser, for a registry admin on real job kinds: no
console errors, no page wider than a phone. With HXO_SCREENSHOTS=1 each page is saved to
test-results/pages/ for a look at the design."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import Plan
from tests.browser.conftest import RESULTS, log_in
from tests.helpers import drain

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
SHOTS = os.environ.get("HXO_SCREENSHOTS") == "1"
# The elements that stick out of a 390 px wide page while their parent does not: the culprits.
WIDER_THAN_PARENT = """
[...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > 392
               && e.parentElement.getBoundingClientRect().right <= 392)
  .slice(0, 5).map(e => e.tagName + '.' + e.className)
"""


def example(name: str, actor) -> Plan:
    document = json.loads((EXAMPLES / f"{name}.json").read_text())
    return services.plan_create(actor=actor, document=document)


def shoot(page, name: str) -> None:
    if SHOTS:
        (RESULTS / "pages").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(RESULTS / "pages" / f"{name}.png"), full_page=True)


def test_every_page_renders_without_console_errors(open_page, admiral, operator) -> None:
    assets = example("assets-index-by-bucket", operator)
    dry = drain(services.run_start_dry_run(plan=assets, actor=operator))
    applied = drain(services.run_apply(plan=assets, actor=operator, dry_run_id=dry.pk))
    docs = example("docs-index-by-route", operator)
    drain(services.run_apply(plan=docs, actor=operator))
    page = open_page()
    log_in(page, "ada")
    pages = {
        "home": "/",
        "plans": "/plans/",
        "plan": f"/plans/{assets.pk}/",
        "editor-new": "/plans/new/",
        "editor-edit": f"/plans/{assets.pk}/edit/",
        "json": f"/plans/{assets.pk}/json/",
        "history": f"/plans/{assets.pk}/revisions/",
        "runs": "/runs/",
        "dry-run": f"/runs/{dry.pk}/",
        "apply-run": f"/runs/{applied.pk}/",
        "approvals": "/approvals/",
        "kinds": "/job-kinds/",
        "kind": "/job-kinds/deploy.migrate/",
        "search-docs": "/search/?q=deploy",
        "search-assets": "/search/assets/?q=logo",
        "audit": "/audit/",
    }
    for name, url in pages.items():
        page.goto(url)
        expect(page.locator("main h1").first).to_be_visible()
        shoot(page, name)
    # The editor on the richest schema: a target picker, statements, a nested backfill form.
    page.goto("/plans/new/")
    page.locator("#f-stages-0-kind").select_option("deploy.migrate")
    expect(page.locator("#f-stages-0-params-target")).to_be_visible()
    expect(page.locator("#f-stages-0-params-backfill-sql")).to_be_visible()
    page.locator("#f-stages-0-params-batch_size").fill("0")
    expect(page.locator("#err-stages-0-params-batch_size")).to_contain_text("minimum of 1")
    expect(page.get_by_test_id("validation-status")).to_contain_text("to fix before saving")
    shoot(page, "editor-errors")
    for name in ("plan", "dry-run", "editor-edit"):
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(pages[name])
        width = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate(WIDER_THAN_PARENT)
        assert width <= 390, (name, width, wide)
        shoot(page, f"{name}-phone")
        page.set_viewport_size({"width": 1280, "height": 900})
    assert page.console_errors == []


def test_the_browser_tests_run_under_a_strict_content_security_policy(open_page, viewer) -> None:
    from tests.browser.conftest import CSP

    page = open_page()
    log_in(page, "vera")
    response = page.goto("/")
    assert response.headers["content-security-policy"] == CSP
    # A page with what the policy forbids (an inline style and script): refused and reported.
    page.route(
        "**/csp-probe/",
        lambda route: route.fulfill(
            body='<p id="x" style="color: red">x</p><script>document.title = "ran"</script>',
            headers={"content-type": "text/html", "content-security-policy": CSP},
        ),
    )
    page.goto("/csp-probe/")
    assert page.evaluate("getComputedStyle(document.getElementById('x')).color") != "rgb(255, 0, 0)"
    assert page.title() != "ran"
    assert any("Content Security Policy" in e for e in page.console_errors), page.console_errors


def test_a_receipt_whose_effects_are_gone_shows_no_green_verified(open_page, operator) -> None:
    """The Merkle roots still match, but index rows the apply wrote were deleted since: the
    receipt page must say not verified and name the partitions (attack finding 7)."""
    from runs_app.models import AssetIndexEntry

    assets = example("assets-index-by-bucket", operator)
    dry = drain(services.run_start_dry_run(plan=assets, actor=operator))
    applied = drain(services.run_apply(plan=assets, actor=operator, dry_run_id=dry.pk))
    page = open_page()
    log_in(page, "otto")
    page.goto(f"/runs/{applied.pk}/receipt/")
    expect(page.get_by_test_id("receipt-status")).to_contain_text("Verified")
    shoot(page, "receipt-verified")

    AssetIndexEntry.objects.filter(bucket="images").delete()
    page.goto(f"/runs/{applied.pk}/receipt/")

    status = page.get_by_test_id("receipt-status")
    expect(status).to_contain_text("Not verified")
    expect(status).to_have_class("status status-error")
    expect(page.get_by_test_id("receipt-missing")).to_contain_text("deleted or changed")
    shoot(page, "receipt-effects-missing")
    assert page.console_errors == []
