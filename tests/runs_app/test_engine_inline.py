"""The engine's logic, driven inline: tasks are called directly (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxo_site import codes
from hxo_site.errors import ServiceError
from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Partition, Run, RunState
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)


def plan_of(operator, *stages):
    return services.plan_create(actor=operator, document={"name": "p", "stages": list(stages)})


def test_three_dependent_stages_go_from_dry_run_to_receipt(
    test_kinds, tmp_path: Path, operator, approver, settings
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    plan = plan_of(
        operator,
        stage("a", tmp_path, items=4),
        stage("b", tmp_path, items=3, depends_on=["a"]),
        stage("c", tmp_path, items=2, depends_on=["a", "b"]),
    )
    dry = services.run_start_dry_run(plan=plan, actor=operator)
    dry = drain(dry)
    assert dry.state == RunState.AWAITING_APPROVAL
    assert effects(tmp_path, "a") == []  # a dry-run has no effect
    assert Partition.objects.filter(run=dry, preview__isnull=False).count() == 9

    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert refused.value.code == codes.DRY_RUN_NOT_APPROVED

    services.run_approve(run=dry, actor=approver, comment="looks right")
    dry.refresh_from_db()
    assert dry.state == RunState.APPROVED

    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3]
    assert sorted(effects(tmp_path, "c")) == [0, 1]
    assert len(run.merkle_root) == 64
    assert AuditEvent.objects.filter(action="run.approve", object_id=str(dry.pk)).exists()


def test_self_approval_is_refused(test_kinds, tmp_path, admiral) -> None:
    plan = plan_of(admiral, stage("a", tmp_path, items=1))
    dry = drain(services.run_start_dry_run(plan=plan, actor=admiral))
    with pytest.raises(ServiceError) as refused:
        services.run_approve(run=dry, actor=admiral)
    assert refused.value.code == codes.SELF_APPROVAL_FORBIDDEN
    assert refused.value.status == 403


def test_apply_of_changed_files_fails_as_stale_plan_with_a_diff(
    test_kinds, tmp_path, operator, approver
) -> None:
    # Files are read by the partitioner, in the worker: the POST answers with the run, the
    # worker fails it with `stale_plan` and the diff, and nothing runs.
    (tmp_path / "source.txt").write_text("v1")
    plan = plan_of(operator, stage("a", tmp_path, items=2))
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    (tmp_path / "source.txt").write_text("v2")

    started = services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert started.state == RunState.PARTITIONING
    run = drain(started)

    assert run.state == RunState.FAILED
    assert run.error["code"] == codes.STALE_PLAN
    assert run.error["dry_run_digest"] == dry.digest != run.error["digest"]
    changed = run.error["diff"]["stages"][0]
    assert changed["id"] == "a"
    assert changed["changed_partitions"][0]["fingerprints"]["changed"] == ["source.txt"]
    assert not Partition.objects.filter(run=run).exists() and not run.run_stages.exists()
    assert effects(tmp_path, "a") == []
    # The approval was consumed by that attempt: one approval, one apply.
    with pytest.raises(ServiceError) as again:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert again.value.code == codes.APPROVAL_USED


def test_apply_of_an_edited_plan_is_refused_at_once(test_kinds, tmp_path, operator, approver):
    # The plan edited since the dry-run is known without partitioning: a synchronous 409.
    plan = plan_of(operator, stage("a", tmp_path, items=2))
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    services.plan_update(
        plan=plan, actor=operator, document={"name": "p", "stages": [stage("a", tmp_path, items=3)]}
    )
    before = Run.objects.count()
    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)
    assert refused.value.code == codes.STALE_PLAN and refused.value.status == 409
    assert refused.value.extra["diff"]["revision"] == {"from": 1, "to": 2}
    [changed] = refused.value.extra["diff"]["stages"]
    assert changed["params"]["to"]["items"] == 3
    assert Run.objects.count() == before


def test_failed_idempotent_partition_is_retried(test_kinds, tmp_path, operator, settings) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    plan = plan_of(
        operator, stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL, fail={"1": 2})
    )
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert run.state == RunState.SUCCEEDED
    assert Partition.objects.get(run=run, index=1).attempts == 3
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2]


def test_non_idempotent_partition_is_never_retried(
    test_kinds, tmp_path, operator, admiral, settings
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    doc = stage(
        "a",
        tmp_path,
        items=2,
        kind=TEST_KIND_NOAPPROVAL,
        executor="test_append_once",
        fail={"0": 1},
    )
    plan = plan_of(operator, doc)
    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator)
    assert refused.value.code == codes.FORCE_MERGE_REQUIRED
    assert refused.value.status == 403
    run = drain(services.run_apply(plan=plan, actor=admiral))
    assert run.state == RunState.FAILED
    failed = Partition.objects.get(run=run, index=0)
    assert failed.state == "failed" and failed.attempts == 1
    assert AuditEvent.objects.filter(action="run.force_merge", object_id=str(run.pk)).exists()


def test_replay_reruns_only_the_failed_partitions(test_kinds, tmp_path, operator, settings) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    settings.HXO_MAX_ATTEMPTS = 1
    plan = plan_of(
        operator, stage("a", tmp_path, items=4, kind=TEST_KIND_NOAPPROVAL, fail={"2": 1})
    )
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert run.state == RunState.FAILED
    # The failure budget is 0: what was not yet claimed when item 2 failed was cancelled.
    first = effects(tmp_path, "a")
    assert 2 not in first and {0, 1} <= set(first)
    redo = set(
        Partition.objects.filter(run=run, state__in=["failed", "cancelled"]).values_list(
            "index", flat=True
        )
    )
    assert 2 in redo and redo == {0, 1, 2, 3} - set(first)
    child = drain(services.run_replay(run=run, actor=operator))
    assert child.parent_id == run.pk
    assert child.state == RunState.SUCCEEDED
    assert set(Partition.objects.filter(run=child).values_list("index", flat=True)) == redo
    # Succeeded partitions were not run again: every item appears exactly once.
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3]


def test_apply_reuses_partitions_that_already_succeeded(test_kinds, tmp_path, operator) -> None:
    plan = plan_of(operator, stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL))
    first = drain(services.run_apply(plan=plan, actor=operator))
    second = drain(services.run_apply(plan=plan, actor=operator))
    assert second.state == RunState.SUCCEEDED
    assert Partition.objects.filter(run=second, state="reused").count() == 3
    assert (
        effects(tmp_path, "a") == sorted(effects(tmp_path, "a")) or len(effects(tmp_path, "a")) == 3
    )
    assert len(effects(tmp_path, "a")) == 3
    forced = drain(services.run_apply(plan=plan, actor=operator, force_rerun=True))
    assert forced.state == RunState.SUCCEEDED
    assert len(effects(tmp_path, "a")) == 6
    assert first.merkle_root


def test_a_stage_past_its_slo_is_recorded_as_breached(test_kinds, tmp_path, operator) -> None:
    doc = stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)
    doc["slo_ms"] = 1
    plan = plan_of(operator, doc)
    run = services.run_apply(plan=plan, actor=operator)
    # Make sure the stage's elapsed time exceeds 1 ms before the first partition completes.
    (tmp_path / "source.txt").write_text("x" * 10)
    run = drain(run)
    assert run.state == RunState.SUCCEEDED
    assert run.slo_breached is True
    stage_row = run.run_stages.get()
    assert stage_row.slo_breached is True and stage_row.slo_ms == 1
    assert AuditEvent.objects.filter(action="stage.slo_breached", object_id=str(run.pk)).exists()


def test_a_partition_past_the_partition_timeout_fails(
    test_kinds, tmp_path, operator, settings
) -> None:
    settings.HXO_PARTITION_TIMEOUT_MS = 300
    settings.HXO_MAX_ATTEMPTS = 1
    plan = plan_of(operator, stage("a", tmp_path, items=1, kind=TEST_KIND_NOAPPROVAL, block=[0]))
    run = drain(services.run_apply(plan=plan, actor=operator))
    assert run.state == RunState.FAILED
    part = Partition.objects.get(run=run)
    assert part.error["code"] == "shard_timeout"
    assert effects(tmp_path, "a") == []


def test_effects_are_checked_by_the_worker_not_by_the_apply_request(
    test_kinds, tmp_path, operator, monkeypatch
) -> None:
    from tests.runs_app.testkinds import AppendExecutor, effect_files

    plan = plan_of(operator, stage("a", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL))
    drain(services.run_apply(plan=plan, actor=operator))
    checked: list[int] = []
    original = AppendExecutor.effect_exists

    def counting(self, ctx, output):
        checked.append(ctx.inputs["item"])
        return original(self, ctx, output)

    monkeypatch.setattr(AppendExecutor, "effect_exists", counting)
    (tmp_path / "effect-a-1").unlink()  # one effect gone since

    second = services.run_apply(plan=plan, actor=operator)
    assert checked == []  # the request only inserted the run, partitioned by a worker
    assert second.state == RunState.PARTITIONING
    assert not Partition.objects.filter(run=second).exists()

    second = drain(second)
    assert sorted(checked) == [0, 1, 2]
    states = dict(Partition.objects.filter(run=second).values_list("index", "state"))
    assert states == {0: "reused", 1: "succeeded", 2: "reused"}
    assert effect_files(tmp_path, "a") == [0, 1, 2]
    reused = Partition.objects.filter(run=second, state="reused")
    assert all(p.reused_from_id and p.output == p.reused_from.output for p in reused)


def test_outcomes_are_written_by_the_drainer_not_by_the_heartbeat_thread(
    test_kinds, tmp_path, operator, monkeypatch
) -> None:
    import threading

    from runs_app.engine import execute

    writers: list[str] = []
    real = execute.record_outcomes

    def recording(outcomes):
        writers.append(threading.current_thread().name)
        return real(outcomes)

    monkeypatch.setattr(execute, "record_outcomes", recording)
    plan = plan_of(operator, stage("a", tmp_path, items=6, kind=TEST_KIND_NOAPPROVAL))

    run = drain(services.run_apply(plan=plan, actor=operator))

    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == [0, 1, 2, 3, 4, 5]
    assert writers, "no outcome was recorded"
    assert "hxo-heartbeat" not in writers
    assert set(writers) == {threading.current_thread().name}
