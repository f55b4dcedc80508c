"""A worker paused past its lease mid-batch changes nothing at the target (issue 11 §5).

A real worker cluster applies a SQL batch to a PostgreSQL target: it takes a row lock and then
waits inside its transaction on an advisory lock the test holds, so the test knows it is
mid-batch (no timing guess). The whole cluster is SIGSTOPped there (a frozen VM, a long GC
pause, a laptop lid), its lease runs out, a second cluster takes the partition over and
applies the batch, and then the first one is SIGCONTed. Counted at the target: the row was
changed exactly once, the one ledger row carries the fence of the cluster that took over, and
nothing the paused cluster did was committed: PostgreSQL ended its idle transaction
(`idle_in_transaction_session_timeout`, half the lease), and its fence re-check against HXO's
database before COMMIT would have refused it anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from runs_app import services
from runs_app.models import ClaimLog, Partition, Run, RunState
from tests.faults.harness import Deployment, require
from tests.faults.test_faults import (
    DEADLINE_S,
    assert_claims_fenced,
    finished,
    reconcile_until_finished,
)
from tests.runs_app.cluster import wait_for
from tests.runs_app.kinds.conftest import PG_ADMIN_URL, pg_role_url

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cluster,
    pytest.mark.postgres,
]

GATE = 4242  # the advisory lock the test holds to keep the batch mid-flight


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for the target, owned by a role made for it (HXO refuses
    superuser targets), dropped (sessions and all) afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        require(False, f"PostgreSQL is unreachable: {exc}")
    name = f"hxo_paused_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    url = pg_role_url(PG_ADMIN_URL, name, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE counter (k INTEGER PRIMARY KEY, hits INTEGER NOT NULL)")
            conn.execute("INSERT INTO counter VALUES (1, 0), (2, 0)")
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        admin.close()


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def test_a_worker_paused_past_its_lease_mid_batch_commits_nothing(
    deployment: Deployment, tokens, operator, settings, pg_url: str
) -> None:
    settings.HXO_DATABASE_TARGETS = {"scratch": pg_url}
    deployment.env["HXO_DATABASE_TARGETS"] = f"scratch={pg_url}"
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "paused worker",
            "stages": [
                {
                    "id": "bump",
                    "kind": "deploy.migrate",
                    "partitioner": "by_sql_batch",
                    "executor": "sql_migrate",
                    "params": {
                        "target": "scratch",
                        "batch_size": 2,
                        # Batch 0 holds the row lock on k = 1 while it waits at the gate;
                        # batch 1 is quick.
                        "statements": [
                            "UPDATE counter SET hits = hits + 1 WHERE k = 1",
                            f"SELECT pg_advisory_xact_lock({GATE})",
                            "UPDATE counter SET hits = hits + 1 WHERE k = 2",
                            "SELECT 1",
                        ],
                        # The cluster that takes over waits for the paused one's row lock
                        # until the server has ended that session: well within this.
                        "lock_timeout_ms": 60_000,
                    },
                }
            ],
        },
    )
    deployment.start_web()
    paused = deployment.start_cluster()
    status, dry = deployment.api(
        "POST", f"/api/v1/plans/{plan.pk}/dry-run/", token=tokens["operator"]
    )
    assert status == 202, dry
    wait_for(lambda: finished(dry["id"]), "the dry-run", timeout=DEADLINE_S)
    assert Run.objects.get(pk=dry["id"]).state == RunState.AWAITING_APPROVAL
    assert query(pg_url, "SELECT k, hits FROM counter ORDER BY k") == [(1, 0), (2, 0)]
    status, body = deployment.api(
        "POST", f"/api/v1/runs/{dry['id']}/approve/", token=tokens["approver"], body={}
    )
    assert status == 200, body
    import psycopg

    gate = psycopg.connect(pg_url, autocommit=True)
    try:
        gate.execute(f"SELECT pg_advisory_lock({GATE})")
        status, run = deployment.api(
            "POST",
            f"/api/v1/plans/{plan.pk}/apply/",
            token=tokens["operator"],
            body={"dry_run": dry["id"]},
        )
        assert status == 202, run

        def waiting_at_the_gate() -> bool:
            return bool(
                query(
                    pg_url,
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'hxo' AND wait_event_type = 'Lock' "
                    "AND query LIKE 'SELECT pg_advisory_xact_lock%'",
                )
            )

        wait_for(waiting_at_the_gate, "the apply's batch 0 to be mid-flight", timeout=DEADLINE_S)
        held = Partition.objects.get(run_id=run["id"], index=0)
        assert held.state == "running"
        first_fence = held.fence
        signal_group(paused.pid, signal.SIGSTOP)  # the whole host freezes, heartbeats included
    finally:
        # Open the gate: the frozen worker's statement completes on the server, its session
        # then sits idle in its transaction until the server ends it.
        gate.close()
    try:
        # At once: the new cluster's batch waits on the paused one's row lock until the server
        # ends that idle session; the reconciler hands it the partition once the lease is out.
        takeover = deployment.start_cluster()
        [done] = reconcile_until_finished(deployment, run["id"])
    finally:
        signal_group(paused.pid, signal.SIGCONT)

    # The paused cluster wakes up with its batch in hand: give it the time to try to commit
    # (it logs the partition as lost or failed), then count.
    pid = held.pk
    wait_for(
        lambda: re.search(rf"partition {pid}[: ]", paused.output()),
        "the paused worker to give up its stale batch",
        timeout=DEADLINE_S,
    )
    assert done.state == RunState.SUCCEEDED
    assert query(pg_url, "SELECT k, hits FROM counter ORDER BY k") == [(1, 1), (2, 1)]
    ledger = query(pg_url, "SELECT partition_id, fence, batch_sha256 FROM hxo_ledger_batches")
    assert len(ledger) == len({sha for *_, sha in ledger}) == 2  # one row per batch
    held.refresh_from_db()
    assert held.state == "succeeded" and held.fence > first_fence
    # Written under the takeover's fence, not the stale one.
    assert [fence for p, fence, _ in ledger if p == pid] == [held.fence]
    assert ClaimLog.objects.filter(partition_id=pid).count() >= 2  # it really was re-claimed
    assert_claims_fenced(run["id"])
    assert takeover.alive()
