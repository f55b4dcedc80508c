"""The scaling bench's claim probe (bench/claim_probe.py) wraps `claims.claim_batch` in its
workers: with it installed a drainer must still drain a run, every effect once, and every
claim must leave its line. Its wrapper once named only the arguments `claim_batch` took at the
time; when the drainer began passing a `sizer`, every drainer of the scaling bench failed on
its first claim (caught and logged, so the bench waited for a run that never moved)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from runs_app import tasks
from runs_app.engine import claims
from runs_app.models import RunState
from tests.helpers import running_run
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_drainer_with_the_probe_installed_drains_and_every_claim_is_timed(
    test_kinds, operator, tmp_path: Path, monkeypatch
) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    monkeypatch.setenv("HXO_CLAIM_PROBE_DIR", str(probe_dir))
    # Restored after the test, whatever the module does to it on import.
    monkeypatch.setattr(claims, "claim_batch", claims.claim_batch)
    monkeypatch.delitem(sys.modules, "bench.claim_probe", raising=False)
    probe = importlib.import_module("bench.claim_probe")
    assert claims.claim_batch is probe.timed_claim_batch

    run = running_run(operator, stage("a", tmp_path, items=7, kind=TEST_KIND_NOAPPROVAL))
    assert tasks.drain(run.pk, budget_s=30)["partitions"] == 7
    run.refresh_from_db()
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(tmp_path, "a")) == list(range(7))
    lines = [
        line.split("\t") for f in probe_dir.glob("*.tsv") for line in f.read_text().splitlines()
    ]
    assert lines and sum(int(parts[2]) for parts in lines) == 7
