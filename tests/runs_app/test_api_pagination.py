"""Lists that hold still: cursor pages of runs, a run's partitions and audit events neither
repeat nor skip rows while rows arrive or change state; page numbers stay the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hxo_site import pagination
from hxo_site.audit import audit
from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.engine import claims
from runs_app.models import Partition, PartitionState, Run
from tests.helpers import partitioned
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = 4


@pytest.fixture(autouse=True)
def small_pages(monkeypatch) -> None:
    # DRF reads PAGE_SIZE into the classes at import; small pages keep the tests fast.
    monkeypatch.setattr(pagination.StrictPageNumberPagination, "page_size", PAGE)
    monkeypatch.setattr(pagination.StrictCursorPagination, "page_size", PAGE)


def new_plan(operator, tmp_path: Path, items: int = 1):
    document = {
        "name": "paged",
        "stages": [stage("a", tmp_path, items=items, kind=TEST_KIND_NOAPPROVAL)],
    }
    return services.plan_create(actor=operator, document=document)


def start_runs(plan, operator, n: int) -> list[int]:
    return [services.run_start_dry_run(plan=plan, actor=operator).pk for _ in range(n)]


def ids(body: dict[str, Any]) -> list[int]:
    return [row["id"] for row in body["results"]]


def follow(client, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, response.json()
    return response.json()


def test_page_numbers_stay_the_default(test_kinds, api_client_for, operator, tmp_path) -> None:
    plan = new_plan(operator, tmp_path)
    start_runs(plan, operator, PAGE + 1)
    body = follow(api_client_for(operator), "/api/v1/runs/")
    assert body["count"] == PAGE + 1
    assert body["next"].endswith("/api/v1/runs/?page=2")
    assert len(body["results"]) == PAGE


def test_cursor_pages_of_runs_repeat_no_id_when_runs_arrive(
    test_kinds, api_client_for, operator, tmp_path
) -> None:
    client = api_client_for(operator)
    plan = new_plan(operator, tmp_path)
    before = start_runs(plan, operator, 2 * PAGE + 1)

    # Page numbers: three new runs push the last three of page 1 onto page 2 (the fault).
    first = ids(follow(client, "/api/v1/runs/"))
    arrived = start_runs(plan, operator, 3)
    second = ids(follow(client, "/api/v1/runs/?page=2"))
    assert len(set(first) & set(second)) == 3

    # Cursors: read page 1, three more runs arrive, the next pages start after page 1.
    body = follow(client, "/api/v1/runs/?pagination=cursor")
    assert "count" not in body and body["previous"] is None
    seen = ids(body)
    assert seen == sorted(before + arrived, reverse=True)[:PAGE]
    start_runs(plan, operator, 3)
    while body["next"]:
        assert "pagination=cursor" in body["next"] and "cursor=" in body["next"]
        body = follow(client, body["next"])
        seen += ids(body)
    assert len(seen) == len(set(seen))
    # Every run that existed when paging started is listed exactly once, newest first.
    assert seen == sorted(before + arrived, reverse=True)


def test_cursor_pages_keep_filters(test_kinds, api_client_for, operator, tmp_path) -> None:
    client = api_client_for(operator)
    plan = new_plan(operator, tmp_path)
    other = new_plan(operator, tmp_path)
    mine = start_runs(plan, operator, PAGE + 2)
    start_runs(other, operator, 3)
    body = follow(client, f"/api/v1/runs/?plan={plan.pk}&pagination=cursor")
    seen = ids(body)
    body = follow(client, body["next"])
    seen += ids(body)
    assert body["next"] is None
    assert seen == sorted(mine, reverse=True)


def test_paging_a_running_runs_pending_partitions_skips_none(
    test_kinds, api_client_for, operator, tmp_path
) -> None:
    client = api_client_for(operator)
    items = 5 * PAGE
    run = partitioned(
        services.run_start_dry_run(plan=new_plan(operator, tmp_path, items=items), actor=operator)
    )
    url = f"/api/v1/runs/{run.pk}/partitions/?state=pending"

    def claim_next(n: int) -> list[int]:
        # A worker claims while the client pages: these leave the pending set.
        return [c.partition_id for c in claims.claim_batch(run.pk, "worker-1", limit=n)]

    # Page numbers: claiming the partitions of page 1 moves the rest up; page 2 skips PAGE.
    first = ids(follow(client, url))
    claim_next(PAGE)
    second = ids(follow(client, url + "&page=2"))
    skipped = set(Partition.objects.filter(run=run).values_list("pk", flat=True)) - set(
        first + second
    )
    assert len([p for p in skipped if p < min(second)]) == PAGE

    # Cursors: the partitions pending throughout are all listed, each once, in id order.
    held = set(
        Partition.objects.filter(run=run, state=PartitionState.RUNNING).values_list("pk", flat=True)
    )
    body = follow(client, url + "&pagination=cursor")
    seen = ids(body)
    while body["next"]:
        held |= set(claim_next(2))
        body = follow(client, body["next"])
        seen += ids(body)
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    pending_throughout = set(
        Partition.objects.filter(run=run, state=PartitionState.PENDING).values_list("pk", flat=True)
    )
    assert pending_throughout and pending_throughout <= set(seen)
    assert set(seen) | held == set(Partition.objects.filter(run=run).values_list("pk", flat=True))
    rows = {r["id"]: r for r in body["results"]}
    assert all(r["state"] == "pending" for r in rows.values())


def test_cursor_pages_of_audit_events_repeat_none(
    test_kinds, api_client_for, admiral, tmp_path
) -> None:
    client = api_client_for(admiral)
    for i in range(2 * PAGE):
        audit(actor=admiral, action="test.paged", object_type="thing", object_id=i)
    body = follow(client, "/api/v1/audit/?action=test.&pagination=cursor")
    seen = ids(body)
    for i in range(3):
        audit(actor=admiral, action="test.paged", object_type="thing", object_id=100 + i)
    while body["next"]:
        body = follow(client, body["next"])
        seen += ids(body)
    assert len(seen) == 2 * PAGE == len(set(seen))
    listed = AuditEvent.objects.filter(pk__in=seen).values_list("object_id", flat=True)
    # The events that existed when paging started, not the three that arrived meanwhile.
    assert sorted(int(o) for o in listed) == list(range(2 * PAGE))


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("pagination=cursor&cursor=not-a-cursor", "cursor"),
        ("cursor=bz0tMQ%3D%3D", "cursor"),  # "o=-1": a negative offset
        ("pagination=sideways", "pagination"),
        ("pagination=cursor&pagination=cursor", "pagination"),
        ("pagination=cursor&page=2", "page"),
        ("pagination=pages&cursor=cD0x", "cursor"),
        # Forged by the tryout: "p=abc" reached the database as an id (a 500), and "AAAA"
        # (three NUL bytes) was read as the first page.
        ("pagination=cursor&cursor=cD1hYmM%3D", "cursor"),
        ("pagination=cursor&cursor=AAAA", "cursor"),
        ("pagination=cursor&cursor=%3D%3D%3D", "cursor"),
        ("pagination=cursor&cursor=eD0x", "cursor"),  # "x=1": no field of a cursor
        ("pagination=cursor&cursor=cD0tMQ%3D%3D", "cursor"),  # "p=-1": no id is negative
        ("pagination=cursor&cursor=cD0rMQ%3D%3D", "cursor"),  # "p=+1"
    ],
)
def test_bad_pagination_parameters_are_a_400_naming_the_parameter(
    test_kinds, api_client_for, admiral, query: str, path: str
) -> None:
    client = api_client_for(admiral)
    for url in ("/api/v1/runs/", "/api/v1/audit/"):
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400, (url, query, response.content)
        body = response.json()
        assert body["code"] == "invalid_value"
        assert [e["path"] for e in body["errors"]] == [path]


def test_the_schema_documents_cursor_pagination(api_client_for, admiral) -> None:
    schema = api_client_for(admiral).get("/api/schema/?format=json").json()
    for path in ("/api/v1/runs/", "/api/v1/runs/{id}/partitions/", "/api/v1/audit/"):
        params = {p["name"] for p in schema["paths"][path]["get"]["parameters"]}
        assert {"page", "pagination", "cursor", "page_size"} <= params, path
        [size] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "page_size"]
        assert (size["schema"]["minimum"], size["schema"]["maximum"]) == (1, 500)
    assert Run.objects.count() == 0


@pytest.mark.parametrize("mode", ["", "&pagination=cursor"])
def test_page_size_sets_the_rows_per_page_with_either_pagination(
    test_kinds, api_client_for, operator, tmp_path, monkeypatch, mode
) -> None:
    """`?page_size=` was silently ignored; now it sets the rows per page, is capped at
    MAX_PAGE_SIZE, and a bad or repeated value is a 400 naming it."""
    monkeypatch.setattr(pagination, "MAX_PAGE_SIZE", 3)
    monkeypatch.setattr(pagination.StrictPageNumberPagination, "max_page_size", 3)
    monkeypatch.setattr(pagination.StrictCursorPagination, "max_page_size", 3)
    plan = new_plan(operator, tmp_path)
    start_runs(plan, operator, 5)
    client = api_client_for(operator)
    assert len(follow(client, f"/api/v1/runs/?page_size=2{mode}")["results"]) == 2
    capped = follow(client, f"/api/v1/runs/?page_size=50{mode}")
    assert len(capped["results"]) == 3
    second = follow(client, capped["next"])
    assert len(second["results"]) == 2 and not set(ids(second)) & set(ids(capped))
    for bad in ("0", "two", "2&page_size=3"):
        answer = client.get(f"/api/v1/runs/?page_size={bad}{mode}")
        assert answer.status_code == 400, answer.content
        assert "page_size" in str(answer.json()["errors"])
