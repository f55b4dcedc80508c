"""Faults with real processes: a whole worker cluster SIGKILLed mid-run, Redis killed and
restarted mid-run, the web server SIGKILLed and restarted mid-run.

After each the run completes and every partition's effect happened exactly once, counted
where it lands: keyed effect files of the test executor, archives of deploy.pack in artifact
storage, ledger rows and inserted rows of deploy.migrate in the target database. Then a
reconciler pass leaves no temporary file behind. (A single worker SIGKILLed mid-partition is
tests/runs_app/test_engine_cluster.py.)
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runs_app import services
from runs_app.models import ClaimLog, Partition, Run, RunState
from tests.faults.harness import Deployment, RedisServer
from tests.runs_app.cluster import wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, effects, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

DEADLINE_S = 180


def finished(run_id: int) -> Run | None:
    run = Run.objects.get(pk=run_id)
    return run if run.is_finished else None


def reconcile_until_finished(deployment: Deployment, *run_ids: int) -> list[Run]:
    """Reconciler passes (as the schedule would run them) until every run has finished: they
    expire the leases of killed workers and re-send the wake-ups that died with them."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        runs = [finished(run_id) for run_id in run_ids]
        if all(runs):
            return runs  # type: ignore[return-value]
        assert time.monotonic() < deadline, [Run.objects.get(pk=r).state for r in run_ids]
        deployment.reconcile()
        try:
            wait_for(lambda: all(finished(r) for r in run_ids), "the runs", timeout=5)
        except AssertionError:
            continue  # another pass: a lease may not have expired yet


def assert_claims_fenced(run_id: int) -> None:
    """No partition was ever held by two workers under one fence."""
    for pid, fences in _fences(run_id).items():
        assert len(fences) == len(set(fences)), (pid, fences)


def _fences(run_id: int) -> dict[int, list[int]]:
    fences: dict[int, list[int]] = {}
    for pid, fence in ClaimLog.objects.filter(partition__run_id=run_id).values_list(
        "partition_id", "fence"
    ):
        fences.setdefault(pid, []).append(fence)
    return fences


def temporary_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*.tmp-*")]


def final_reconcile_leaves_no_temporary_files(deployment: Deployment, *roots: Path) -> None:
    """A dead attempt's temporary file (planted here, as a SIGKILL mid-write leaves one) and
    any real leftovers are removed once they are older than the stale window; the window is
    passed by ageing the files rather than by waiting 15 minutes."""
    artifacts = deployment.root / "var" / "artifacts" / "pack"
    artifacts.mkdir(parents=True, exist_ok=True)
    planted = artifacts / f"{'0' * 64}.tar.gz.tmp-999999-1"
    planted.write_bytes(b"half an archive")
    old = time.time() - 3600
    for path in temporary_files(deployment.root / "var", *roots):
        os.utime(path, (old, old))
    report = deployment.reconcile()
    assert report["temp_files_removed"] >= 1, report
    assert temporary_files(deployment.root / "var", *roots) == []


@pytest.fixture
def workspace(tmp_path: Path, settings) -> Path:
    """A small tree for deploy.pack: 24 files, two per partition."""
    root = tmp_path / "ws"
    for i in range(24):
        path = root / "app" / f"mod{i:02d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"VALUE = {i}\n" * (i + 1))
    settings.HXO_WORKSPACES = {"scratch": str(root.resolve())}  # for validation in here
    return root


def pack_stage(sid: str = "pack") -> dict[str, Any]:
    return {
        "id": sid,
        "kind": "deploy.pack",
        "partitioner": "by_filesize",
        "executor": "pack_backend",
        "params": {"workspace": "scratch", "root": "app", "max_files": 2},
    }


# --- A whole cluster dies -------------------------------------------------------------------


def test_a_whole_cluster_killed_mid_run_is_replaced_and_every_effect_happens_once(
    deployment: Deployment, tokens, operator, tmp_path: Path, workspace: Path
) -> None:
    effects_dir = tmp_path / "effects"
    effects_dir.mkdir()
    deployment.env["HXO_WORKSPACES"] = f"scratch={workspace.resolve()}"
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "cluster dies",
            "stages": [
                stage("a", effects_dir, items=12, kind=TEST_KIND_NOAPPROVAL, block=[3]),
                pack_stage(),
                stage("b", effects_dir, items=4, kind=TEST_KIND_NOAPPROVAL, depends_on=["a"]),
            ],
        },
    )
    deployment.start_web()
    first = deployment.start_cluster()
    status, run = deployment.api(
        "POST", f"/api/v1/plans/{plan.pk}/apply/", token=tokens["operator"], body={}
    )
    assert status == 202, run
    wait_for((effects_dir / "holding-3").exists, "partition 3 to be held by the first cluster")

    first.kill()  # the whole host: main process, pusher, monitor, every worker
    (effects_dir / "release-3").write_text("go")
    held = Partition.objects.get(run_id=run["id"], stage__stage_id="a", index=3)
    assert held.state == "running"  # a dead owner's lease, until it expires
    deployment.start_cluster()

    [done] = reconcile_until_finished(deployment, run["id"])

    assert done.state == RunState.SUCCEEDED
    assert effect_files(effects_dir, "a") == list(range(12))
    assert effect_files(effects_dir, "b") == list(range(4))
    assert set(effects(effects_dir, "a")) == set(range(12))
    archives = sorted((deployment.root / "var" / "artifacts").rglob("*.tar.gz"))
    packs = Partition.objects.filter(run_id=run["id"], stage__stage_id="pack")
    assert len(archives) == packs.count() == 12  # one archive per partition, none twice
    assert {p.output["archive"] for p in packs} == {
        str(a.relative_to(deployment.root / "var" / "artifacts")) for a in archives
    }
    held.refresh_from_db()
    assert held.attempts == 2  # run again on the new cluster, under a new fence
    assert_claims_fenced(run["id"])
    final_reconcile_leaves_no_temporary_files(deployment, effects_dir)


def test_sql_batches_are_applied_exactly_once_when_the_cluster_dies_mid_apply(
    deployment: Deployment, tokens, operator, tmp_path: Path, settings
) -> None:
    target = tmp_path / "target.sqlite3"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE fx (n INTEGER NOT NULL)")
    targets = {"scratch": f"sqlite:///{target}"}
    settings.HXO_DATABASE_TARGETS = targets
    deployment.env["HXO_DATABASE_TARGETS"] = f"scratch=sqlite:///{target}"
    n = 200
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "ledger",
            "stages": [
                {
                    "id": "fill",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {
                        "target": "scratch",
                        "batch_size": 1,
                        "statements": [f"INSERT INTO fx (n) VALUES ({i})" for i in range(n)],
                    },
                }
            ],
        },
    )
    deployment.start_web()
    first = deployment.start_cluster()
    status, dry = deployment.api(
        "POST", f"/api/v1/plans/{plan.pk}/dry-run/", token=tokens["operator"]
    )
    assert status == 202, dry
    wait_for(lambda: finished(dry["id"]), "the dry-run", timeout=DEADLINE_S)
    status, body = deployment.api(
        "POST", f"/api/v1/runs/{dry['id']}/approve/", token=tokens["approver"], body={}
    )
    assert status == 200, body
    status, run = deployment.api(
        "POST",
        f"/api/v1/plans/{plan.pk}/apply/",
        token=tokens["operator"],
        body={"dry_run": dry["id"]},
    )
    assert status == 202, run

    def ledger_rows() -> int:
        with sqlite3.connect(target, timeout=30) as conn:
            try:
                return conn.execute("SELECT COUNT(*) FROM hxo_ledger_batches").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    wait_for(lambda: ledger_rows() >= 30, "the first batches", timeout=DEADLINE_S)
    first.kill()  # mid-apply: a batch may be in flight in its transaction
    assert ledger_rows() < n, "the apply finished before the kill; make the stage longer"
    deployment.start_cluster()

    [done] = reconcile_until_finished(deployment, run["id"])

    assert done.state == RunState.SUCCEEDED
    with sqlite3.connect(target) as conn:
        rows = [r[0] for r in conn.execute("SELECT n FROM fx")]
        ledger = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT batch_sha256) FROM hxo_ledger_batches"
        )
        assert ledger.fetchone() == (n, n)
    assert sorted(rows) == list(range(n))  # every batch's row once: none lost, none twice
    assert_claims_fenced(run["id"])
    final_reconcile_leaves_no_temporary_files(deployment)


# --- Redis dies -----------------------------------------------------------------------------


def test_redis_killed_and_restarted_mid_run_loses_no_work(
    deployment_factory, private_redis: RedisServer, tokens, operator, tmp_path: Path
) -> None:
    deployment = deployment_factory(
        HXO_BROKER="redis", REDIS_URL=private_redis.url, HXO_CLUSTER_NAME="hxo-fault-redis"
    )
    effects_dir = tmp_path / "effects"
    effects_dir.mkdir()
    first_plan = services.plan_create(
        actor=operator,
        document={
            "name": "before the outage",
            "stages": [stage("a", effects_dir, items=16, kind=TEST_KIND_NOAPPROVAL, block=[5])],
        },
    )
    second_plan = services.plan_create(
        actor=operator,
        document={
            "name": "during the outage",
            "stages": [stage("c", effects_dir, items=6, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    deployment.start_web()
    deployment.start_cluster()
    status, first = deployment.api(
        "POST", f"/api/v1/plans/{first_plan.pk}/apply/", token=tokens["operator"], body={}
    )
    assert status == 202, first
    wait_for((effects_dir / "holding-5").exists, "partition 5 to be held")

    private_redis.stop()  # queued wake-ups and cluster stats are gone with it
    (effects_dir / "release-5").write_text("go")
    # Submitting still works: the run is in the database; its wake-up is lost, not an error.
    # (force_rerun: its items have the content ids of the first run's, which would be reused.)
    status, second = deployment.api(
        "POST",
        f"/api/v1/plans/{second_plan.pk}/apply/",
        token=tokens["operator"],
        body={"force_rerun": True},
    )
    assert status == 202, second
    # Its partition task is lost with the broker: it stays `partitioning`, with nothing
    # written, until the reconciler sends it again.
    assert second["state"] == "partitioning"
    assert not Partition.objects.filter(run_id=second["id"]).exists()
    # The drainer that held partition 5 finishes what it can within its budget; with the
    # broker down nothing can wake a drainer for the second run.
    wait_for(
        lambda: not Partition.objects.filter(run_id=first["id"], state="running").exists(),
        "the first run's drainer to let go",
    )
    assert Run.objects.get(pk=second["id"]).state == RunState.PARTITIONING
    assert not Partition.objects.filter(run_id=second["id"]).exists()

    private_redis.start()  # empty: nothing saved
    [one, two] = reconcile_until_finished(deployment, first["id"], second["id"])

    assert one.state == two.state == RunState.SUCCEEDED
    assert effect_files(effects_dir, "a") == list(range(16))
    assert effect_files(effects_dir, "c") == list(range(6))
    assert sorted(effects(effects_dir, "c")) == list(range(6))  # each ran exactly once
    assert_claims_fenced(first["id"])
    assert_claims_fenced(second["id"])
    final_reconcile_leaves_no_temporary_files(deployment, effects_dir)


# --- The web server dies --------------------------------------------------------------------


def test_the_web_server_killed_and_restarted_mid_run_loses_nothing(
    deployment: Deployment, tokens, operator, tmp_path: Path
) -> None:
    effects_dir = tmp_path / "effects"
    effects_dir.mkdir()
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "web dies",
            "stages": [stage("a", effects_dir, items=20, kind=TEST_KIND_NOAPPROVAL, block=[7])],
        },
    )
    web = deployment.start_web()
    deployment.start_cluster()
    key = {"Idempotency-Key": "deploy-2026-11-25"}
    status, run = deployment.api(
        "POST", f"/api/v1/plans/{plan.pk}/apply/", token=tokens["operator"], body={}, headers=key
    )
    assert status == 202, run
    wait_for((effects_dir / "holding-7").exists, "the run to be under way")

    web.kill()  # kill -9 of gunicorn's master and workers
    # The client never saw an answer it trusts, and retries against the restarted server.
    deployment.start_web()
    status, again = deployment.api(
        "POST", f"/api/v1/plans/{plan.pk}/apply/", token=tokens["operator"], body={}, headers=key
    )
    assert status == 202 and again["id"] == run["id"]  # the same run, not a second one
    (effects_dir / "release-7").write_text("go")

    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, seen = deployment.api("GET", f"/api/v1/runs/{run['id']}/", token=tokens["operator"])
        assert status == 200, seen
        if seen["state"] in ("succeeded", "failed", "aborted"):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)

    assert seen["state"] == "succeeded"
    assert Run.objects.filter(plan=plan).count() == 1
    assert effect_files(effects_dir, "a") == list(range(20))
    counts = Counter(effects(effects_dir, "a"))
    assert set(counts.values()) == {1}  # nothing was interrupted: each item ran exactly once
    assert_claims_fenced(run["id"])
    final_reconcile_leaves_no_temporary_files(deployment, effects_dir)
