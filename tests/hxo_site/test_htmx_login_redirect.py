"""htmx requests after the session expired: every dashboard partial answers `HX-Redirect` to
the login page with `next` = the page the browser shows, never a 302 that htmx would follow
and swap the login page into the run page."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import URLPattern, reverse

from runs_app import services
from runs_app import urls as dashboard_urls
from runs_app.models import Partition
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND, make_test_kinds, stage

pytestmark = pytest.mark.django_db

LOGIN = reverse("login")


def dashboard_urls_for(plan_pk: int, run_pk: int, partition_pk: int) -> list[str]:
    """Every dashboard route but login and logout, with ids of objects that exist."""
    out = []
    for pattern in dashboard_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        if pattern.name in ("login", "logout"):
            continue
        route = str(pattern.pattern)
        values = {
            "pk": run_pk if route.startswith("runs/") else plan_pk,
            "partition_pk": partition_pk,
            "number": 1,
            "kind": TEST_KIND,
        }
        kwargs = {k: values[k] for k in pattern.pattern.converters}
        out.append(reverse(pattern.name, kwargs=kwargs))
    return out


@pytest.fixture
def objects(operator, tmp_path: Path) -> tuple[int, int, int]:
    make_test_kinds()
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("s", tmp_path, items=2)]}
    )
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    return plan.pk, run.pk, Partition.objects.filter(stage__run=run).first().pk


def test_every_partial_sends_an_expired_htmx_request_to_the_login_page(objects) -> None:
    plan_pk, run_pk, partition_pk = objects
    page = f"/runs/{run_pk}/?state=failed"
    client = Client()
    checked = []
    for url in dashboard_urls_for(plan_pk, run_pk, partition_pk):
        for method in ("get", "post"):
            plain = getattr(client, method)(url)
            if not (plain.status_code == 302 and plain["Location"].startswith(LOGIN)):
                continue  # a method the view refuses (405), or a page that needs no login
            htmx = getattr(client, method)(
                url,
                headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver{page}"},
            )
            assert htmx.status_code == 200, (method, url, htmx.status_code)
            assert htmx["HX-Redirect"] == f"{LOGIN}?next={quote(page, safe='/')}", (method, url)
            assert "Location" not in htmx
            assert b"<form" not in htmx.content  # no login form to swap into the page
            assert "HX-Request" in htmx["Vary"]
            checked.append((method, url))
    # The progress poll, the partials and the actions are among them.
    assert ("get", f"/runs/{run_pk}/progress/") in checked
    assert ("get", f"/runs/{run_pk}/receipt/") in checked
    assert ("post", f"/runs/{run_pk}/abort/") in checked
    assert ("post", "/plans/validate/") in checked
    assert len(checked) >= 25, checked


def test_next_never_leaves_the_site_and_falls_back_to_the_partial(objects) -> None:
    _, run_pk, _ = objects
    url = f"/runs/{run_pk}/progress/"
    for current in ("http://evil.example/runs/1/", "javascript:alert(1)", ""):
        response = Client().get(url, headers={"HX-Request": "true", "HX-Current-URL": current})
        assert response["HX-Redirect"] == f"{LOGIN}?next={quote(url, safe='/')}", current


def test_signed_in_htmx_requests_and_plain_requests_are_unchanged(objects, operator) -> None:
    _, run_pk, _ = objects
    url = f"/runs/{run_pk}/progress/"
    plain = Client().get(url)
    assert plain.status_code == 302 and plain["Location"] == f"{LOGIN}?next={quote(url, safe='/')}"
    client = Client()
    client.force_login(operator)
    response = client.get(url, headers={"HX-Request": "true"})
    assert response.status_code in (200, 286) and "HX-Redirect" not in response  # 286: done
    # Other redirects of htmx requests are left to the views (here: a login page visited
    # while signed in sends the user home).
    assert "HX-Redirect" not in client.get(LOGIN, headers={"HX-Request": "true"})
