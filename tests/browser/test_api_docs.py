"""The API docs page in Chromium: the OpenAPI document's JSON link opens in the browser
instead of downloading a YAML file (issue 15 §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RESULTS = Path(__file__).resolve().parents[2] / "test-results"


def test_the_docs_page_opens_the_schema_as_json_in_the_browser(open_page: Any) -> None:
    page = open_page()
    page.goto("/api/docs/")
    page.locator(".opblock").first.wait_for()  # Swagger UI drew the operations
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "api-docs.png"))
    downloads: list[Any] = []
    page.on("download", lambda d: downloads.append(d))

    page.get_by_test_id("schema-json").click()
    page.wait_for_url("**/api/schema/?format=json")

    assert downloads == []
    assert '"openapi": "3.' in page.locator("body").inner_text()
