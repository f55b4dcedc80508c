"""Playwright for Python driving Debian's Chromium against pytest-django's live server.

Chromium is found at HXO_CHROMIUM (default /usr/bin/chromium). When it is missing the browser
tests are skipped with the reason, except under CI=true, where they fail: CI must run them.
A failing test leaves a full-page screenshot of every page it opened in test-results/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from blueprints_app.bootstrap import create_roles, load_contract

CHROMIUM = os.environ.get("HXO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RESULTS = Path(__file__).resolve().parents[2] / "test-results"
# What issue 6 will send: the pages must work under it, so every test browses with it on
# (a violation is a console error, and the tests fail on console errors).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Generous: a run on a freshly started cluster on a slow CI machine takes a while.
TIMEOUT_MS = 30_000


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _registry_rows(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush the database, data migrations included: put the rows back."""
    if request.node.get_closest_marker("django_db"):
        request.getfixturevalue("db")
        load_contract()
        create_roles()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        reason = (
            f"Chromium not found at {CHROMIUM} (apt-get install -y chromium, or set HXO_CHROMIUM)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    # Playwright's sync API runs an event loop in this thread; the tests still use the ORM
    # synchronously between browser steps, which Django would otherwise refuse.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture
def open_page(
    browser: Any, live_server: Any, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """`open_page()` → a page in a fresh browser context (its own cookies) on the live server."""
    pages: list[Any] = []

    def make(
        *, width: int = 1280, height: int = 900, csp: bool = True, javascript: bool = True
    ) -> Any:
        context = browser.new_context(
            base_url=live_server.url,
            viewport={"width": width, "height": height},
            java_script_enabled=javascript,
        )
        context.set_default_timeout(TIMEOUT_MS)
        if csp:
            context.route("**/*", _with_csp)
        page = context.new_page()
        page.console_errors = []
        page.on(
            "console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None
        )
        pages.append(page)
        return page

    yield make
    report = getattr(request.node, "report_call", None)
    failed = report is None or report.failed
    for i, page in enumerate(pages):
        if failed:
            RESULTS.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            try:
                page.screenshot(path=str(RESULTS / f"{name}-{i}.png"), full_page=True)
            except Exception as exc:  # a crashed page must not hide the test's own failure
                print(f"screenshot of page {i} failed: {exc}")
        # Requests still in flight through the CSP route must not fail the next test.
        page.context.unroute_all(behavior="ignoreErrors")
        page.context.close()


def _with_csp(route: Any) -> None:
    response = route.fetch(max_redirects=0)
    route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})


def log_in(page: Any, username: str) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"{username}-password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))
