"""The run page and its partials: what they show, and that their query counts do not grow
with the number of partitions (runs of 10 and 1,000 partitions, made with bulk_create)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from runs_app.models import Partition, Plan, Run, RunMode, RunStage, RunState
from tests.runs_app.testkinds import TEST_KIND
from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db

SIZES = [10, 1000]
# The same ceiling for both sizes: the page's cost is per stage, never per partition.
MAX_QUERIES = {
    # page and progress: one grouped query reads the failed partitions' error codes
    # (`selectors.stage_errors`) when a stage counts a failure, as these runs' stages do.
    "page": 15,
    "progress": 9,
    "partitions": 9,
    # The receipt also reads the run's partitions (one query) to check each effect.
    "receipt": 13,
    "diff": 14,
    "partition": 7,
}


def big_run(
    plan: Plan, n: int, *, mode: str = RunMode.APPLY, state: str = RunState.SUCCEEDED
) -> Run:
    """A finished run of two stages and `n` partitions, written directly (fast)."""
    now = timezone.now()
    run = Run.objects.create(
        plan=plan,
        revision=plan.latest_revision,
        mode=mode,
        state=state,
        digest="d" * 64,
        requested_by=plan.created_by,
        merkle_root="a" * 64,
        started_at=now - timedelta(seconds=60),
        finished_at=now,
    )
    half = n // 2
    for position, (sid, count) in enumerate((("a", half), ("b", n - half))):
        failed = 1 if sid == "b" else 0
        stage = RunStage.objects.create(
            run=run,
            stage_id=sid,
            position=position,
            kind=TEST_KIND,
            partitioner="test_items",
            executor="test_append",
            depends_on=["a"] if sid == "b" else [],
            slo_ms=30_000,
            state="failed" if failed else "succeeded",
            total=count,
            succeeded=count - failed,
            failed=failed,
            weight=count,
            started_at=now - timedelta(seconds=60 - 30 * position),
            finished_at=now - timedelta(seconds=30 - 30 * position),
        )
        start = stage.started_at
        Partition.objects.bulk_create(
            [
                Partition(
                    run=run,
                    stage=stage,
                    index=i,
                    inputs={"item": i, "stage_kind": TEST_KIND},
                    label=f"item {i}",
                    weight=1,
                    content_id=f"{position}{i:063x}",
                    state="failed" if failed and i == count - 1 else "succeeded",
                    attempts=1,
                    started_at=start + timedelta(milliseconds=20 * i),
                    finished_at=start + timedelta(milliseconds=20 * i + 15),
                    duration_ms=15,
                    output={"status": "done", "item": i},
                    preview={"summary": f"would append item {i}", "item": i},
                    error={"code": "boom", "message": "it broke"}
                    if failed and i == count - 1
                    else None,
                )
                for i in range(count)
            ],
            batch_size=500,
        )
    return run


@pytest.fixture
def runs_by_size(plan) -> dict[int, Run]:
    return {n: big_run(plan, n) for n in SIZES}


@pytest.mark.parametrize("n", SIZES)
def test_the_run_page_costs_the_same_queries_for_10_and_1000_partitions(
    n, runs_by_size, client_for, operator, django_assert_max_num_queries
) -> None:
    run = runs_by_size[n]
    client = client_for(operator)
    partition = run.partitions.order_by("-id").first()
    requests = {
        "page": (f"/runs/{run.pk}/", {}),
        "progress": (f"/runs/{run.pk}/progress/", {"HTTP_HX_REQUEST": "true"}),
        "partitions": (
            f"/runs/{run.pk}/?stage=b&state=succeeded&page=2",
            {"HTTP_HX_REQUEST": "true"},
        ),
        "receipt": (f"/runs/{run.pk}/receipt/", {"HTTP_HX_REQUEST": "true"}),
        "diff": (
            f"/runs/{run.pk}/diff/?against={runs_by_size[SIZES[0]].pk}",
            {"HTTP_HX_REQUEST": "true"},
        ),
        "partition": (f"/runs/{run.pk}/partitions/{partition.pk}/", {}),
    }
    for name, (url, headers) in requests.items():
        with django_assert_max_num_queries(MAX_QUERIES[name]):
            response = client.get(url, **headers)
        assert response.status_code in (200, 286), (name, response.status_code)


def test_the_timeline_samples_big_stages_and_draws_a_bounded_svg(
    runs_by_size, client_for, viewer
) -> None:
    page = html(client_for(viewer).get(f"/runs/{runs_by_size[1000].pk}/"))
    assert "every 5th of 500" in page
    assert page.count('class="g-bar ') <= 2 * 120
    small = html(client_for(viewer).get(f"/runs/{runs_by_size[10].pk}/"))
    assert small.count('class="g-bar ') == 10


def test_the_partition_table_filters_by_stage_and_state_and_shows_errors(
    runs_by_size, client_for, viewer
) -> None:
    run = runs_by_size[10]
    client = client_for(viewer)
    response = client.get(f"/runs/{run.pk}/?stage=b&state=failed", HTTP_HX_REQUEST="true")
    body = html(response)
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="partitions"')  # the partial only
    assert "it broke" in body and "boom" in body
    assert body.count("<tr>") == 2  # header + the one failed partition
    page = html(client.get(f"/runs/{run.pk}/?stage=a"))
    assert "item 4" in page and "item 5" not in page.split('id="partitions"')[1]


def test_the_partition_table_is_paginated(runs_by_size, client_for, viewer) -> None:
    body = html(
        client_for(viewer).get(f"/runs/{runs_by_size[1000].pk}/?page=3", HTTP_HX_REQUEST="true")
    )
    assert "Page 3 of 40" in body
    assert 'hx-get="/runs/' in body and 'href="?page=4"' in body


def test_progress_polls_while_running_and_stops_with_a_refresh_when_done(
    plan, client_for, viewer
) -> None:
    run = big_run(plan, 10, state=RunState.RUNNING)
    client = client_for(viewer)
    response = client.get(f"/runs/{run.pk}/progress/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert 'hx-trigger="every 1s"' in html(response)
    Run.objects.filter(pk=run.pk).update(state=RunState.SUCCEEDED)
    response = client.get(f"/runs/{run.pk}/progress/", HTTP_HX_REQUEST="true")
    assert response.status_code == 286  # htmx stops polling
    assert response["HX-Refresh"] == "true"
    assert 'hx-trigger="every 1s"' not in html(response)


def test_the_progress_shows_counts_by_state_and_slo(runs_by_size, client_for, viewer) -> None:
    body = html(client_for(viewer).get(f"/runs/{runs_by_size[10].pk}/progress/"))
    assert "4 succeeded" in body and "1 failed" in body
    assert "<meter" in body and "30.0 s" in body
    assert 'data-testid="run-percent">100%<' in body


def test_a_receipt_that_does_not_match_says_so(runs_by_size, client_for, viewer) -> None:
    body = html(client_for(viewer).get(f"/runs/{runs_by_size[10].pk}/receipt/"))
    assert "Not verified" in body


def test_a_viewer_sees_the_run_without_any_action(runs_by_size, client_for, viewer) -> None:
    body = html(client_for(viewer).get(f"/runs/{runs_by_size[10].pk}/"))
    assert 'id="run-actions"' not in body
    for action in ("approve", "reject", "apply", "abort", "replay"):
        assert f'data-testid="{action}"' not in body


def test_an_operator_may_replay_a_failed_run_and_abort_a_running_one(
    plan, runs_by_size, client_for, operator, approver
) -> None:
    failed = big_run(plan, 10, state=RunState.FAILED)
    running = big_run(plan, 10, state=RunState.RUNNING)
    op, ap = client_for(operator), client_for(approver)
    assert 'data-testid="replay"' in html(op.get(f"/runs/{failed.pk}/"))
    assert 'data-testid="abort"' in html(op.get(f"/runs/{running.pk}/"))
    assert 'data-testid="replay"' not in html(ap.get(f"/runs/{failed.pk}/"))
    assert 'data-testid="abort"' not in html(ap.get(f"/runs/{running.pk}/"))
    response = op.post(f"/runs/{running.pk}/abort/")
    assert response.status_code == 302
    running.refresh_from_db()
    assert running.state == RunState.ABORTED
    response = op.post(f"/runs/{running.pk}/abort/", follow=True)
    assert response.status_code == 409
    assert "not in a state that allows this" in html(response)


def test_the_query_counts_are_equal_for_10_and_1000_partitions(
    runs_by_size, client_for, operator
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(operator)
    counts: dict[str, list[int]] = {}
    for n in SIZES:
        run = runs_by_size[n]
        for name, url, headers in (
            ("page", f"/runs/{run.pk}/", {}),
            ("progress", f"/runs/{run.pk}/progress/", {"HTTP_HX_REQUEST": "true"}),
            ("partitions", f"/runs/{run.pk}/?state=succeeded&page=2", {"HTTP_HX_REQUEST": "true"}),
            ("receipt", f"/runs/{run.pk}/receipt/", {"HTTP_HX_REQUEST": "true"}),
        ):
            with CaptureQueriesContext(connection) as ctx:
                client.get(url, **headers)
            counts.setdefault(name, []).append(len(ctx.captured_queries))
    assert all(a == b for a, b in counts.values()), counts
