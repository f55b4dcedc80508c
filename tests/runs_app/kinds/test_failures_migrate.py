"""Issue 15 §2 with a real `deploy.migrate` apply on SQLite whose statement names a column
dropped after the review: all 5 batches fail with `sql_error` (5 failed, 0 cancelled), the run
page's failure banner says which stage failed, its first error grouped by code with the
count, and what to do; each batch's log holds the error's traceback."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.runs_app.kinds.test_permanent_errors import a_missing_column_fails_each_batch_once

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 [A-Z]+ \S+: ")


@pytest.mark.django_db(transaction=True)
def test_sqlite_missing_column_five_failed_none_cancelled_with_banner_and_logs(
    sqlite_target, operator, approver, client, settings
) -> None:
    sqlite_target("db")
    run = a_missing_column_fails_each_batch_once("db", operator, approver, client, settings)

    page = client.get(reverse("run", args=[run.pk])).content.decode()
    start = page.index('data-testid="failure-banner"')
    banner = page[start : page.index("</section>", start)]
    # Which stage failed, its first error grouped by code with the count, and what to do.
    assert "<code>notes</code>" in banner
    assert "5 failed" in banner and "<code>sql_error</code>" in banner
    assert "no such column: note" in banner
    assert reverse("plan-edit", args=[run.plan_id]) in banner
    assert 'data-testid="banner-replay"' in banner
    assert "never started" not in banner
    # The banner comes before the progress section.
    assert start < page.index('id="progress"')

    # The traceback of each batch's error is in its log, served by the API.
    body = client.get(f"/api/v1/runs/{run.pk}/partitions/3/log/?stage=notes").json()
    text = "\n".join(body["lines"])
    assert "--- attempt 1 ---" in text
    assert "Traceback (most recent call last)" in text
    assert "no such column: note" in text
    assert LINE.match(body["lines"][0]), body["lines"][0]
