"""Plans, runs and partitions (engine.py) and the search indexes executors write (indexes.py)."""

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
from runs_app.models.indexes import AssetIndexEntry, DocPage

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
    "Run",
    "RunMode",
    "RunStage",
    "RunState",
    "StageState",
]
