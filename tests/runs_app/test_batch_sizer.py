"""Claim batches sized by the partitions' weights (`claims.BatchSizer`): a drainer that learnt
its stage's seconds per unit of weight stops a batch before a heavy partition would take it
past its target, so the heavy partitions are left for the other drainers instead of piling
up behind one (deploy.prime on Django: 1.85 s of executing for 1.5 CPU-s on two workers
before, bench/profiles/prime.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from runs_app.engine import claims
from runs_app.models import Partition, PartitionState, Run, RunState
from tests.helpers import drain, running_run
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)

TARGET = 0.25


def weighted_run(operator, tmp_path: Path, weights: list[int]) -> Run:
    """A running run of len(weights) partitions of one stage, with these weights and a
    due time per index, so claim order is index order."""
    run = running_run(operator, stage("a", tmp_path, items=len(weights), kind=TEST_KIND_NOAPPROVAL))
    base = timezone.now() - dt.timedelta(minutes=1)
    for p in Partition.objects.filter(run=run).order_by("index"):
        p.weight = weights[p.index]
        p.due_at = base + dt.timedelta(milliseconds=p.index)
        p.save(update_fields=["weight", "due_at"])
    return run


def indexes(held: list[claims.Claim]) -> list[int]:
    return sorted(
        Partition.objects.filter(pk__in=[c.partition_id for c in held]).values_list(
            "index", flat=True
        )
    )


def test_a_batch_stops_before_the_heavy_partition_and_the_next_drainer_takes_it(
    test_kinds, operator, tmp_path
) -> None:
    run = weighted_run(operator, tmp_path, [10, 10, 1000, 1000, 10, 10])
    stage_pk = Partition.objects.filter(run=run).values_list("stage_id", flat=True).first()
    # Learnt: 5 ms per unit (two partitions of 10 took 0.1 s), so 1000 units is 5 s.
    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256, count=6)
    sizer.per_weight[stage_pk] = 0.005
    first = claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)
    assert indexes(first) == [0, 1]
    assert [c.weight for c in first] == [10, 10]
    # Another drainer, nothing learnt yet: a weighted partition of an unseen stage is a whole
    # batch, so it takes one heavy partition, not every row its count would allow.
    fresh = claims.BatchSizer(target_s=TARGET, max_batch=256, count=6)
    assert indexes(claims.claim_batch(run.pk, "worker-b", fresh.count, fresh)) == [2]
    # A partition heavier than the target is still claimed, alone: a batch is never empty.
    assert indexes(claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)) == [3]
    # The last two are all that is left (the read found fewer rows than its limit): shared
    # among the run's drainers, one each, not both in one drainer's batch.
    assert indexes(claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)) == [4]
    assert indexes(claims.claim_batch(run.pk, "worker-b", sizer.count, sizer)) == [5]
    # Every partition claimed once.
    assert not Partition.objects.filter(run=run, state=PartitionState.PENDING).exists()
    assert claims.claim_batch(run.pk, "worker-c", 10) == []


def test_what_is_left_is_shared_among_the_runs_drainers(
    test_kinds, operator, tmp_path, settings
) -> None:
    """Guided self-scheduling at the tail: a drainer that sees all that is left takes at
    most 1/concurrency of it, so the last partitions do not all end in one batch."""
    settings.HXO_MAX_CONCURRENCY = 2
    run = weighted_run(operator, tmp_path, [0] * 8)
    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256, count=256, per_partition=0.1)
    assert indexes(claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)) == [0, 1, 2, 3]
    assert indexes(claims.claim_batch(run.pk, "worker-b", sizer.count, sizer)) == [4, 5]
    assert indexes(claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)) == [6]
    assert indexes(claims.claim_batch(run.pk, "worker-b", sizer.count, sizer)) == [7]
    # More than the limit left: the count alone. Exactly the limit left: shared on SQLite
    # (the read takes one row past the limit to tell the two apart); on PostgreSQL the read
    # locks what it reads, so it reads no row it will not claim and takes the limit.
    (tmp_path / "more").mkdir()
    more = weighted_run(operator, tmp_path / "more", [0] * 8)
    assert indexes(claims.claim_batch(more.pk, "worker-a", 6, sizer)) == list(range(6))
    (tmp_path / "exact").mkdir()
    exact = weighted_run(operator, tmp_path / "exact", [0] * 6)
    shared = list(range(6)) if connection.vendor == "postgresql" else [0, 1, 2]
    assert indexes(claims.claim_batch(exact.pk, "worker-a", 6, sizer)) == shared


def test_the_tail_is_split_among_the_drainers_there_are_not_the_concurrency_allowed(
    test_kinds, operator, tmp_path, settings
) -> None:
    """Concurrency 4 with one drainer: halves (at least two parts), not quarters, so the tail
    costs no more claims than there are drainers to take them; with three holding, thirds."""
    settings.HXO_MAX_CONCURRENCY = 4
    run = weighted_run(operator, tmp_path, [0] * 12)
    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256, count=256, per_partition=0.1)
    assert indexes(claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)) == list(range(6))
    assert indexes(claims.claim_batch(run.pk, "worker-b", sizer.count, sizer)) == [6, 7, 8]
    # a and b hold partitions, c claims: three drainers share what is left (3 rows).
    assert indexes(claims.claim_batch(run.pk, "worker-c", sizer.count, sizer)) == [9]


def test_without_a_sizer_or_with_weightless_partitions_the_count_alone_bounds_a_batch(
    test_kinds, operator, tmp_path
) -> None:
    run = weighted_run(operator, tmp_path, [0, 0, 0, 0, 0])
    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256, count=4)
    assert indexes(claims.claim_batch(run.pk, "worker-a", sizer.count, sizer)) == [0, 1, 2, 3]
    (tmp_path / "other").mkdir()
    other = weighted_run(operator, tmp_path / "other", [10, 1000, 1000])
    assert indexes(claims.claim_batch(other.pk, "worker-a", 3)) == [0, 1, 2]


def test_a_drainer_with_a_sizer_runs_an_uneven_run_to_every_effect_once(
    test_kinds, operator, tmp_path
) -> None:
    weights = [1, 500, 3, 2000, 7, 7, 900, 1]
    run = weighted_run(operator, tmp_path, weights)
    drain(run)
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == list(range(len(weights)))


def test_observe_learns_a_count_and_a_rate_per_stage() -> None:
    def claim(pk: int, stage_pk: int, weight: int) -> claims.Claim:
        return claims.Claim(pk, 1, stage_pk, 1, 1, "w", weight=weight)

    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256)
    sizer.observe([claim(1, 7, 100), claim(2, 7, 300)], 0.2)  # 0.1 s a partition
    assert sizer.count == 2
    assert sizer.per_weight == {7: pytest.approx(0.0005)}
    # Weightless partitions teach a count, never a rate (their stage stays unknown).
    sizer.observe([claim(3, 8, 0)] * 4, 0.004)
    assert sizer.count == 250
    assert 8 not in sizer.per_weight
    # The count stays within max_batch, and at least one.
    sizer.observe([claim(4, 7, 1)], 0.0)
    assert sizer.count == 256
    sizer.observe([claim(5, 7, 1)], 30.0)
    assert sizer.count == 1
    assert sizer.per_weight[7] == pytest.approx(30.0)
    # A batch of two weighted stages teaches neither: units differ between stages.
    sizer.observe([claim(6, 7, 50), claim(7, 9, 150), claim(8, 8, 0)], 1.0)
    assert sizer.per_weight == {7: pytest.approx(30.0)}
    # One weighted stage beside weightless partitions: that stage's rate.
    sizer.observe([claim(9, 9, 200), claim(10, 8, 0)], 1.0)
    assert sizer.per_weight == {7: pytest.approx(30.0), 9: pytest.approx(0.005)}


def test_fits_takes_the_longest_prefix_within_the_target_and_never_none() -> None:
    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256)
    sizer.per_weight[1] = 0.01  # 25 units fill the target
    rows = [(i, 0, False, 1, w) for i, w in enumerate([10, 10, 10, 1])]
    assert sizer.fits(rows) == 2
    assert sizer.fits([(0, 0, False, 1, 100), *rows]) == 1
    assert sizer.fits([(0, 0, False, 1, 0)] * 5 + rows) == 7  # weightless rows cost nothing
    assert sizer.fits([(0, 0, False, 2, 5), (1, 0, False, 1, 1)]) == 1  # stage 2 unseen
    assert sizer.fits([]) == 0


def test_fits_shares_what_is_left_by_weight_and_by_count() -> None:
    sizer = claims.BatchSizer(target_s=TARGET, max_batch=256)
    sizer.per_weight[1] = 0.001  # the target holds 250 units: only the share cuts here
    tail = [(i, 0, False, 1, w) for i, w in enumerate([40, 30, 20, 10])]
    assert sizer.fits(tail) == 4
    assert sizer.fits(tail, share=2) == 1  # 40 of 100: 40 + 30 would pass half
    assert sizer.fits(tail[1:], share=2) == 1  # 30 of 60
    # What is left is quick (30 units, 30 ms < SHARE_MIN_S): taken whole, not split.
    assert sizer.fits(tail[2:], share=2) == 2
    assert sizer.fits([(0, 0, False, 1, 500)], share=4) == 1  # never none
    # Weightless: by count, once the last batch says they are slow enough to share.
    weightless = [(0, 0, False, 1, 0)] * 7
    assert sizer.fits(weightless, share=2) == 7  # nothing learnt: their cost is unknown
    sizer.per_partition = 0.02  # 7 x 20 ms = 140 ms left
    assert sizer.fits(weightless, share=2) == 4
    sizer.per_partition = 0.00002  # 7 no-op partitions: sharing would cost more than them
    assert sizer.fits(weightless, share=2) == 7
