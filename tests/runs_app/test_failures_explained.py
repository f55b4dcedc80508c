"""Issue 15 §2, failures explain themselves: honest failed/cancelled counts, per-partition logs
captured from real executor runs and served by the API, the failure banner on the run page and
a failed run's receipt shown plainly. Runs are real (the engine drained inline, real files and
a real SQLite target)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.urls import reverse

from hxo_site import codes
from runs_app import services
from runs_app.engine.logs import BoundedLines
from runs_app.models import Partition, PartitionLog, PartitionState, RunStage, RunState
from runs_app.models.engine import PARTITION_LOG_MAX_BYTES, PARTITION_LOG_MAX_LINES
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db(transaction=True)

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 [A-Z]+ \S+: ")


def apply_of(operator, *stages):
    plan = services.plan_create(actor=operator, document={"name": "p", "stages": list(stages)})
    return drain(services.run_apply(plan=plan, actor=operator))


def states(run) -> dict[int, tuple[str, int]]:
    return {
        i: (s, a)
        for i, s, a in Partition.objects.filter(run=run).values_list("index", "state", "attempts")
    }


# --- Honest counts ---------------------------------------------------------------------------


def test_every_batch_that_met_the_error_counts_as_failed_not_cancelled(
    test_kinds, tmp_path: Path, operator, client, settings
) -> None:
    # Every item fails on every try (a transient error, retried): each one is attempted and
    # errs; the first to run out of attempts puts the stage over its budget while the others
    # wait for their retry. They met the error: failed, not cancelled.
    settings.HXO_RETRY_BACKOFF_MS = 0
    settings.HXO_MAX_ATTEMPTS = 2
    every = {str(i): 99 for i in range(5)}
    run = apply_of(operator, stage("s", tmp_path, items=5, kind=TEST_KIND_NOAPPROVAL, fail=every))

    assert run.state == RunState.FAILED
    found = states(run)
    assert {s for s, _ in found.values()} == {PartitionState.FAILED}, found
    assert all(a >= 1 for _, a in found.values())
    s = RunStage.objects.get(run=run)
    assert (s.failed, s.cancelled, s.pending, s.running) == (5, 0, 0, 0)
    errors = Partition.objects.filter(run=run).values_list("error", flat=True)
    assert all(e["code"] == "executor_error" for e in errors)

    client.force_login(operator)
    api = client.get(f"/api/v1/runs/{run.pk}/").json()["stages"][0]
    assert (api["counts"]["failed"], api["counts"]["cancelled"]) == (5, 0)
    [grouped] = api["errors_by_code"]
    assert (grouped["code"], grouped["count"]) == ("executor_error", 5)
    page = client.get(reverse("run", args=[run.pk])).content.decode()
    banner = page[page.index('data-testid="failure-banner"') :]
    assert "5 failed" in banner[: banner.index("</section>")]
    assert "never started" not in banner[: banner.index("</section>")]


def test_partitions_never_started_because_the_stage_failed_are_cancelled(
    test_kinds, tmp_path: Path, operator, client, settings
) -> None:
    # One attempt each: the first failure stops the stage before the rest start.
    settings.HXO_MAX_ATTEMPTS = 1
    run = apply_of(
        operator, stage("s", tmp_path, items=5, kind=TEST_KIND_NOAPPROVAL, fail={"0": 9})
    )
    found = states(run)
    assert found[0] == (PartitionState.FAILED, 1)
    never = [i for i, (state, attempts) in found.items() if attempts == 0]
    assert never and all(found[i][0] == PartitionState.CANCELLED for i in never)
    s = RunStage.objects.get(run=run)
    assert s.failed + s.cancelled + s.succeeded == 5
    assert s.cancelled == len(never)
    # Both are shown, in words.
    client.force_login(operator)
    page = client.get(reverse("run", args=[run.pk])).content.decode()
    assert f"{s.failed} failed" in page and f"{s.cancelled} cancelled" in page


def test_a_failed_runs_receipt_is_not_a_green_verified_hero(
    test_kinds, tmp_path: Path, operator, client, settings
) -> None:
    settings.HXO_MAX_ATTEMPTS = 1
    run = apply_of(
        operator, stage("s", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL, fail={"1": 9})
    )
    assert run.state == RunState.FAILED and run.merkle_root
    client.force_login(operator)
    receipt = client.get(reverse("run-receipt-page", args=[run.pk])).content.decode()
    assert "status-ok" not in receipt
    assert 'data-testid="receipt-status"' in receipt
    assert "run failed" in receipt
    assert "✓ Verified" not in receipt.replace('<span aria-hidden="true">✓</span> ', "✓ ")


# --- Per-partition logs ----------------------------------------------------------------------


def test_an_executors_log_is_kept_with_its_partition_bounded_to_the_last_200_lines(
    test_kinds, tmp_path: Path, operator, viewer, nobody, api_client_for, client
) -> None:
    run = apply_of(
        operator,
        stage("a", tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL, log_lines=10_000),
        stage("b", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL, depends_on=["a"]),
    )
    assert run.state == RunState.SUCCEEDED
    api = api_client_for(viewer)
    body = api.get(f"/api/v1/runs/{run.pk}/partitions/1/log/?stage=a").json()
    lines = body["lines"]
    assert len(lines) == PARTITION_LOG_MAX_LINES == body["max_lines"]
    assert lines[-1].endswith("hxo.test_append: item 1 attempt 1 line 9999")
    assert lines[0].endswith("item 1 attempt 1 line 9800")
    assert all(LINE.match(line) for line in lines)
    assert body["dropped_lines"] == 10_001 - PARTITION_LOG_MAX_LINES  # header + 10,000 lines
    assert (body["stage"], body["index"], body["state"]) == ("a", 1, "succeeded")
    stored = PartitionLog.objects.get(
        partition__run=run, partition__index=1, partition__stage__stage_id="a"
    )
    assert len(stored.text.encode()) <= PARTITION_LOG_MAX_BYTES
    # A partition that logged nothing has an empty log and no row.
    quiet = api.get(f"/api/v1/runs/{run.pk}/partitions/0/log/?stage=b").json()
    assert quiet["lines"] == [] and quiet["updated_at"] is None
    assert PartitionLog.objects.filter(partition__run=run).count() == 2

    # Shown on the partition's page.
    partition = Partition.objects.get(run=run, stage__stage_id="a", index=1)
    client.force_login(viewer)
    page = client.get(reverse("partition-detail", args=[run.pk, partition.pk])).content.decode()
    assert 'data-testid="partition-log"' in page and "line 9999" in page

    # Refusals: capability, unknown partition and stage, a stage left out, hostile numbers.
    assert (
        api_client_for(nobody).get(f"/api/v1/runs/{run.pk}/partitions/0/log/?stage=a").status_code
        == 403
    )
    missing = api.get(f"/api/v1/runs/{run.pk}/partitions/7/log/?stage=a")
    assert missing.status_code == 404 and missing.json()["code"] == codes.NOT_FOUND
    huge = api.get(f"/api/v1/runs/{run.pk}/partitions/{10**30}/log/?stage=a")
    assert huge.status_code == 404 and huge.json()["code"] == codes.NOT_FOUND
    assert api.get("/api/v1/runs/99999/partitions/0/log/?stage=a").status_code == 404
    wrong = api.get(f"/api/v1/runs/{run.pk}/partitions/0/log/?stage=zz")
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["path"] == "stage"
    unnamed = api.get(f"/api/v1/runs/{run.pk}/partitions/0/log/")
    assert unnamed.status_code == 400 and unnamed.json()["code"] == codes.REQUIRED
    assert unnamed.json()["errors"][0]["path"] == "stage"


def test_every_attempt_is_appended_under_its_header(
    test_kinds, tmp_path: Path, operator, client, settings
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    settings.HXO_MAX_ATTEMPTS = 3
    run = apply_of(
        operator,
        stage("s", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL, fail={"0": 2}, log_lines=2),
    )
    assert run.state == RunState.SUCCEEDED
    client.force_login(operator)
    lines = client.get(f"/api/v1/runs/{run.pk}/partitions/0/log/").json()["lines"]
    text = "\n".join(lines)
    for attempt in (1, 2, 3):
        assert f"--- attempt {attempt} ---" in text
        assert f"item 0 attempt {attempt} line 1" in text
    # The transient errors' tracebacks are there too, not only on the worker's stderr.
    assert text.count("RuntimeError: injected failure of item 0") == 2


def test_the_bounds_hold_by_bytes_and_cut_a_huge_line() -> None:
    ring = BoundedLines()
    for i in range(100):
        ring.add(f"{i} " + "x" * 2000)
    assert sum(len(line.encode()) + 1 for line in ring.lines) <= PARTITION_LOG_MAX_BYTES
    assert ring.lines[-1].startswith("99 ")
    assert ring.dropped == 100 - len(ring)
    ring.add("é" * 100_000)
    assert len(ring.lines[-1].encode()) <= 8 * 1024
    assert ring.lines[-1].endswith("…[cut]")
