"""The plan editor in the browser: keyboard use, and live validation that never replaces what
the user is typing (the input elements stay the same DOM nodes)."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in
from tests.runs_app.testkinds import TEST_KIND, make_test_kinds

pytestmark = pytest.mark.django_db(transaction=True)

MARK = "el => { el.hxoMark = 'kept'; }"
MARKED = "el => el.hxoMark === 'kept'"


def test_stages_are_added_moved_and_removed_from_the_keyboard(open_page, operator) -> None:
    make_test_kinds()
    page = open_page()
    log_in(page, "otto")
    page.goto("/plans/new/")
    page.get_by_role("button", name="+ Add stage").focus()
    page.keyboard.press("Enter")
    second = page.locator("#f-stages-1-id")
    expect(second).to_be_focused()  # the new stage's first field takes the focus
    expect(second).to_have_value("stage-2")
    page.keyboard.type("renamed")
    page.get_by_role("button", name="Move stage 2 up").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#f-stages-0-id")).to_have_value("renamed")
    expect(page.locator("#f-stages-1-id")).to_have_value("stage-1")
    page.get_by_role("button", name="Remove stage 2").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#stage-1")).to_have_count(0)
    expect(page.locator("#f-stages-0-id")).to_have_value("renamed")
    assert page.console_errors == []


def test_live_validation_never_replaces_the_field_being_typed_in(open_page, operator) -> None:
    make_test_kinds()
    page = open_page()
    log_in(page, "otto")
    page.goto("/plans/new/")
    name = page.locator("#f-name")
    name.evaluate(MARK)
    page.locator("#f-stages-0-kind").select_option(TEST_KIND)
    expect(page.locator("#f-stages-0-partitioner")).to_have_value("test_items")
    items = page.locator("#f-stages-0-params-items")
    items.evaluate(MARK)
    # Type slowly enough that validations run and land between the keystrokes.
    name.press_sequentially("nightly backfill", delay=60)
    page.wait_for_timeout(700)
    name.press_sequentially(" v2", delay=550)
    items.press_sequentially("12", delay=550)
    expect(page.get_by_test_id("validation-status")).to_contain_text("to fix before saving")
    expect(page.locator("#err-stages-0-params-dir")).to_contain_text("'dir' is a required property")
    assert name.input_value() == "nightly backfill v2"
    assert items.input_value() == "12"
    assert name.evaluate(MARKED) and items.evaluate(MARKED)
    assert page.console_errors == []


def test_json_import_is_checked_as_it_is_typed(open_page, operator) -> None:
    make_test_kinds()
    page = open_page()
    log_in(page, "otto")
    page.goto("/plans/new/json/")
    text = page.get_by_label("Plan document (JSON)")
    text.evaluate(MARK)
    text.fill('{"name": "x", "stages": [')
    expect(page.get_by_test_id("json-errors")).to_contain_text("not valid JSON")
    doc = {
        "name": "x",
        "stages": [
            {"id": "a", "kind": TEST_KIND, "partitioner": "by_module", "executor": "test_append"}
        ],
    }
    text.fill(json.dumps(doc))
    expect(page.get_by_test_id("json-errors")).to_contain_text("stages[0].partitioner")
    assert text.evaluate(MARKED)
    assert page.console_errors == []


def test_without_javascript_a_plan_is_composed_saved_and_dry_run(
    open_page, operator, tmp_path
) -> None:
    from runs_app import tasks
    from runs_app.models import Run

    make_test_kinds()
    page = open_page(javascript=False)
    log_in(page, "otto")
    page.goto("/plans/new/")
    page.get_by_label("Name").fill("no script")
    page.locator("#f-stages-0-kind").select_option(TEST_KIND)
    page.get_by_role("button", name="Update choices for the kind and partitioner").click()
    expect(page.locator("#f-stages-0-partitioner")).to_have_value("test_items")
    page.locator("#f-stages-0-params-items").fill("2")
    page.locator("#f-stages-0-params-dir").fill(str(tmp_path))
    page.get_by_test_id("save-plan").click()
    expect(page.get_by_text("created (revision 1)")).to_be_visible()
    page.get_by_test_id("start-dry-run").click()
    expect(page.locator("h1")).to_contain_text("Dry-run #")
    run = Run.objects.get()
    tasks.drain(run.pk, budget_s=30)
    page.reload()
    expect(page.locator("h1 .state-awaiting_approval")).to_be_visible()
    expect(page.get_by_test_id("run-percent")).to_have_text("100%")
    page.get_by_label("State").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#partitions")).to_contain_text("would append item 1")
    assert "state=succeeded" in page.url
