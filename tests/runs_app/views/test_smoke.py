from __future__ import annotations

import pytest

from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db


def test_pages_render_for_admiral(client_for, admiral, plan, applied, dry_run) -> None:
    c = client_for(admiral)
    for url in [
        "/",
        "/plans/",
        f"/plans/{plan.pk}/",
        "/plans/new/",
        f"/plans/{plan.pk}/edit/",
        f"/plans/{plan.pk}/json/",
        "/plans/new/json/",
        f"/plans/{plan.pk}/revisions/",
        f"/plans/{plan.pk}/revisions/1/",
        "/runs/",
        f"/runs/{dry_run.pk}/",
        f"/runs/{applied.pk}/",
        f"/runs/{applied.pk}/progress/",
        f"/runs/{applied.pk}/receipt/",
        f"/runs/{dry_run.pk}/diff/",
        "/approvals/",
        "/job-kinds/",
        "/job-kinds/test.echo/",
        "/job-kinds/deploy.pack/",
        "/search/?q=hello",
        "/search/assets/?q=logo",
        "/audit/",
    ]:
        r = c.get(url)
        assert r.status_code == 200, (url, html(r)[:3000])
