"""The run page's progress poll after the session expired: the browser lands on the login
page as a whole page (with `next` back to the run), not a login form nested in the run page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from playwright.sync_api import expect

from runs_app import services
from runs_app.models import RunState
from tests.browser.conftest import RESULTS, log_in
from tests.runs_app.testkinds import make_test_kinds, stage

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_expired_session_sends_the_polling_run_page_to_the_login_page(
    open_page, operator, tmp_path: Path
) -> None:
    make_test_kinds()
    plan = services.plan_create(
        actor=operator, document={"name": "expiry", "stages": [stage("s", tmp_path, items=3)]}
    )
    # No worker runs: the run stays unfinished, so its page keeps polling.
    run = services.run_start_dry_run(plan=plan, actor=operator)
    assert run.state not in (RunState.SUCCEEDED, RunState.AWAITING_APPROVAL)
    page = open_page()
    log_in(page, "otto")
    page.goto(f"/runs/{run.pk}/")
    polls = []
    page.on("response", lambda r: polls.append(r.status) if "/progress/" in r.url else None)
    expect(page.locator("h1")).to_contain_text(f"#{run.pk}")
    page.wait_for_event("response", lambda r: "/progress/" in r.url)  # it polls

    Session.objects.all().delete()  # the session ends on the server

    page.wait_for_url(re.compile(rf".*/login/\?next=/runs/{run.pk}/$"))
    expect(page.get_by_label("Username")).to_have_count(1)
    expect(page.locator("form")).to_have_count(1)  # one login form, not one inside a run page
    expect(page.locator("header")).to_have_count(1)
    assert page.locator(f"text=#{run.pk}").count() == 0  # the run page is gone
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "session-expiry-login.png"), full_page=True)
    assert 200 in polls  # polls answered before the session ended

    # Logging in again goes back to the run page.
    page.get_by_label("Username").fill("otto")
    page.get_by_label("Password").fill("otto-password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(rf".*/runs/{run.pk}/$"))
    assert page.console_errors == []
