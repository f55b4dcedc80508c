"""The real-material tier: every test module here is marked `real_material` (its
`pytestmark`) and runs over packages
fetched from the registries (tests/realmaterial/material.py).

Offline, every test of the tier is skipped with one message (pytest's `-ra` summary groups
them on one line); under CI=true a failure to fetch fails them instead. `-m "not
real_material"` leaves the tier out without trying to fetch.

Runs go through the engine as a worker runs them: services start the dry-run and the apply,
`tests.helpers.drain` runs the drainer inline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runs_app import services
from runs_app.models import Partition, PartitionState, Run, RunState
from tests.helpers import drain
from tests.realmaterial.material import CATALOGUE, MaterialError, fetch, unpack

# Fixtures of the kinds' tests, shared here: scratch storages and targets in tmp_path.
from tests.runs_app.conftest import _registry_rows  # noqa: F401
from tests.runs_app.kinds.conftest import pg_target, scratch, sqlite_target  # noqa: F401

_FOUND: dict[str, Path] = {}
_MISSING: list[str] = []


def archives() -> dict[str, Path] | str:
    """Every catalogue item's verified archive, or why one could not be had (tried once per
    session)."""
    if not _FOUND and not _MISSING:
        for item in CATALOGUE.values():
            try:
                _FOUND[item.name], _fetched = fetch(item)
            except MaterialError as exc:
                _MISSING.append(str(exc))
                break
    return _MISSING[0] if _MISSING else _FOUND


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The tier's gate, before any fixture: the material is there, or every test of the tier
    is skipped (a laptop offline) or fails (CI=true).

    Raised here rather than in a fixture, the skip keeps this file's location, so pytest's
    summary shows one line for the whole tier instead of one per test."""
    if item.get_closest_marker("real_material") is None:
        return
    found = archives()
    if isinstance(found, str):
        message = f"real material unavailable (offline?): {found}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs the real material: {message}", pytrace=False)
        pytest.skip(f"{message}; deselect the tier with -m 'not real_material'")


@pytest.fixture
def material(tmp_path: Path) -> Callable[[str], Path]:
    """`material("click")`: the package unpacked into a fresh folder of tmp_path (its top
    folder: `click-8.1.7/`, npm's `package/`)."""
    found = archives()
    assert not isinstance(found, str), found  # the gate above skipped or failed the test

    def make(name: str) -> Path:
        return unpack(CATALOGUE[name], found[name], tmp_path / "material" / name)

    return make


@pytest.fixture
def workspace_of(material: Callable[[str], Path], settings: Any) -> Callable[[str], Path]:
    """`workspace_of("click")`: the package unpacked and registered as workspace "click"."""

    def make(name: str) -> Path:
        root = material(name)
        settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, name: str(root.resolve())}
        return root

    return make


def stage(
    kind: str, partitioner: str, executor: str, *, sid: str = "s", **params: Any
) -> dict[str, Any]:
    """One stage of a plan document."""
    return {
        "id": sid,
        "kind": kind,
        "partitioner": partitioner,
        "executor": executor,
        "params": params,
        "depends_on": [],
    }


def plan_of(name: str, *stages: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": "real material", "stages": list(stages)}


def errors_of(run: Run) -> list[Any]:
    return list(
        Partition.objects.filter(run=run, state=PartitionState.FAILED).values_list(
            "error", flat=True
        )
    )


def outputs_of(run: Run, stage_id: str | None = None) -> list[dict[str, Any]]:
    qs = Partition.objects.filter(run=run)
    if stage_id is not None:
        qs = qs.filter(stage__stage_id=stage_id)
    return [o for o in qs.order_by("pk").values_list("output", flat=True)]


def inputs_of(run: Run) -> list[dict[str, Any]]:
    return list(Partition.objects.filter(run=run).order_by("pk").values_list("inputs", flat=True))


def previews_of(run: Run) -> list[dict[str, Any]]:
    return list(Partition.objects.filter(run=run).order_by("pk").values_list("preview", flat=True))


class Engine:
    """Dry-run, approval when the kind asks for one, then apply, through the services and
    the drainer; `unchanged` (called after the dry-run) asserts it committed nothing."""

    def __init__(self, operator: Any, approver: Any) -> None:
        self.operator = operator
        self.approver = approver

    def dry_run(self, document: dict[str, Any]) -> tuple[Any, Run]:
        plan = services.plan_create(actor=self.operator, document=document)
        dry = drain(services.run_start_dry_run(plan=plan, actor=self.operator))
        assert dry.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED), errors_of(dry)
        return plan, dry

    def apply(self, plan: Any, dry: Run) -> Run:
        if dry.state == RunState.AWAITING_APPROVAL:
            services.run_approve(run=dry, actor=self.approver, comment="reviewed")
        run = drain(services.run_apply(plan=plan, actor=self.operator, dry_run_id=dry.pk))
        assert run.state == RunState.SUCCEEDED, errors_of(run)
        return run

    def run(
        self, document: dict[str, Any], unchanged: Callable[[], None] | None = None
    ) -> tuple[Run, Run]:
        plan, dry = self.dry_run(document)
        if unchanged is not None:
            unchanged()
        return dry, self.apply(plan, dry)


@pytest.fixture
def engine(operator: Any, approver: Any, settings: Any) -> Engine:
    settings.HXO_RETRY_BACKOFF_MS = 0
    return Engine(operator, approver)
