"""A replay whose copying process is SIGKILLed mid-copy: the pending child it leaves is
discarded by the reconciler once its copy lease lapses, the parent can be replayed again, and
the new replay holds every failed partition exactly once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from hxo_site import codes
from hxo_site.errors import ServiceError
from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Lease, Partition, PartitionState, Run, RunState
from tests.faults.harness import Deployment
from tests.helpers import partitioned
from tests.runs_app.cluster import wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

FAILED = 6_000

# Runs in its own process (the web request's stand-in): a short copy lease, small batches and
# a pause after each, so the test can kill it after some batches and before the last.
COPY = """
from datetime import timedelta
import time
from django.contrib.auth import get_user_model
from runs_app import services
from runs_app.engine import partitioning
from runs_app.models import Run

services.REPLAY_LEASE = timedelta(seconds=2)
partitioning.BATCH = 500
insert = partitioning.insert_partitions

def slow_insert(run_id, rows):
    written = insert(run_id, rows)
    time.sleep(0.3)
    return written

partitioning.insert_partitions = slow_insert
services.run_replay(run=Run.objects.get(pk={run}), actor=get_user_model().objects.get(pk={user}))
print("finished")
"""


def failed_run(operator, tmp_path: Path) -> Run:
    """A finished apply whose FAILED partitions all failed (set so: executing 6,000 partitions
    to make them fail is not what this test is about; the copy is)."""
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "many failed",
            "stages": [stage("a", tmp_path, items=FAILED, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    Partition.objects.filter(run=run).update(state=PartitionState.FAILED)
    Run.objects.filter(pk=run.pk).update(state=RunState.FAILED)
    run.refresh_from_db()
    return run


def test_a_replay_killed_mid_copy_is_discarded_and_can_be_asked_for_again(
    deployment: Deployment, operator, tmp_path: Path
) -> None:
    parent = failed_run(operator, tmp_path)
    script = "import django\ndjango.setup()\n" + COPY.format(run=parent.pk, user=operator.pk)
    copier = deployment._start("replay", [sys.executable, "-c", script])

    def child() -> Run | None:
        return Run.objects.filter(parent=parent).first()

    wait_for(
        lambda: (c := child()) is not None and Partition.objects.filter(run=c).count() >= 1000,
        "the copy to be under way",
        timeout=60,
    )
    copier.kill()
    orphan = child()
    assert orphan is not None and orphan.state == RunState.PENDING
    copied = Partition.objects.filter(run=orphan).count()
    assert 0 < copied < FAILED, copied  # killed mid-copy, not before or after
    assert "finished" not in copier.output()

    # A half-copied replay is not whole: aborting, pausing or throttling it is refused
    # (aborting it made the partial copy final, its parent `already_replayed`).
    for act in (services.run_abort, services.run_pause):
        with pytest.raises(ServiceError) as refused:
            act(run=orphan, actor=operator)
        assert refused.value.code == codes.REPLAY_IN_PROGRESS
    # Until the reconciler repairs it, the parent's replay is held by the dead copy.
    with pytest.raises(ServiceError) as held:
        services.run_replay(run=parent, actor=operator)
    assert held.value.code == codes.REPLAY_IN_PROGRESS

    deadline = time.monotonic() + 60
    while True:
        report = deployment.reconcile()
        if report["replays_discarded"]:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.5)
    assert report["replays_discarded"] == [orphan.pk]
    assert not Run.objects.filter(pk=orphan.pk).exists()
    assert not Partition.objects.filter(run_id=orphan.pk).exists()
    assert not Lease.objects.filter(name=services.replay_lease_name(orphan.pk)).exists()
    event = AuditEvent.objects.get(action="run.replay_discarded")
    assert event.object_id == str(parent.pk)
    assert event.detail["replay"] == orphan.pk and event.detail["partitions_copied"] == copied
    assert deployment.reconcile()["replays_discarded"] == []

    again = services.run_replay(run=parent, actor=operator)
    assert again.state == RunState.RUNNING
    indexes = list(Partition.objects.filter(run=again).values_list("index", flat=True))
    assert sorted(indexes) == list(range(FAILED))  # each failed partition once
    assert not Lease.objects.filter(name__startswith="replay-copy:").exists()
