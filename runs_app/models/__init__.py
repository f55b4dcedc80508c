"""Plans, runs and partitions (engine.py) and the indexes executors write (indexes.py:
assets, documentation pages, the module registry)."""

from __future__ import annotations

from runs_app.models.engine import (
    Approval,
    ClaimLog,
    Lease,
    Partition,
    PartitionState,
    Plan,
    PlanRevision,
    Run,
    RunMode,
    RunStage,
    RunState,
    StageState,
)
from runs_app.models.indexes import AssetIndexEntry, DocPage, RegistryEntry

__all__ = [
    "Approval",
    "AssetIndexEntry",
    "ClaimLog",
    "DocPage",
    "Lease",
    "Partition",
    "PartitionState",
    "Plan",
    "PlanRevision",
    "RegistryEntry",
    "Run",
    "RunMode",
    "RunStage",
    "RunState",
    "StageState",
]
