"""Plans, runs and partitions (engine.py), the indexes executors write (indexes.py:
assets, documentation pages, the module registry) and what the metrics endpoint keeps
(metrics.py)."""

from __future__ import annotations

from runs_app.models.engine import (
    PAUSED,
    RUN_PUBLIC_STATES,
    Approval,
    ClaimLog,
    Lease,
    Partition,
    PartitionLog,
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
from runs_app.models.metrics import MetricCounter, StageRollup

__all__ = [
    "PAUSED",
    "RUN_PUBLIC_STATES",
    "Approval",
    "AssetIndexEntry",
    "ClaimLog",
    "DocPage",
    "Lease",
    "MetricCounter",
    "Partition",
    "PartitionLog",
    "PartitionState",
    "Plan",
    "PlanRevision",
    "RegistryEntry",
    "Run",
    "RunMode",
    "RunStage",
    "RunState",
    "StageRollup",
    "StageState",
]
