"""Adaptive sub-batches for `deploy.migrate` backfills (issue 15 §4): GitLab's batch optimizer
inside one approved partition.

What the approver signs stays coarse and fixed: the partitioner still writes one partition per
`batch_size` keys (the manifest, so the digest, pins the SQL, the whole key range, each
partition's range and the three bounds below). When the backfill names `target_batch_ms`, the
executor runs each partition's range as consecutive **sub-batches**, each its own transaction
with its own ledger row (`hxo_ledger_intervals`, the interval ledger every backfill already
uses), and sizes the next sub-batch from how long the last ones took, within
`[min_batch_size, max_batch_size]` keys. Which sub-ranges ran is decided at apply and recorded
(the partition output's `sub_batches`, and one ledger interval each), so the ledger and the
receipt stay exact without entering the digest; docs/exactly-once.md §3 says why that is safe.

The optimizer is GitLab's (`Gitlab::Database::BackgroundMigration::BatchOptimizer`): an
exponential moving average (alpha 0.4) of the observed cost, a dead band around the target
where the size is left alone (90 %..100 % of it), and a capped step (at most x1.2 up; GitLab
cuts by at most 20 % per job, here at most x0.5 per sub-batch, since a sub-batch that ran too
long holds its locks that long). Two changes for sub-batches whose sizes differ: the average is
over the cost per key (ms / keys), not per job, and a sub-batch slower than the average is
believed at once (shrink fast, grow slowly).

Nothing here talks to a database: `run` is handed a `step(first, last) -> (rows, ledger)` that
applies one inclusive key range in one fenced transaction (`SqlMigrate._apply_watched`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from blueprints_app.registry import ComponentError

# Error codes (module constants: tests assert on codes).
ADAPTIVE_BOUNDS = "adaptive_bounds"
ADAPTIVE_TARGET_ABOVE_TIMEOUT = "adaptive_target_above_timeout"
ADAPTIVE_TOO_MANY_SUB_BATCHES = "adaptive_too_many_sub_batches"
ADAPTIVE_UNUSED = "adaptive_unused"  # a warning: bounds without a target do nothing

# A partition runs at most this many sub-batches at its smallest size, so its output (one
# [first, last, rows, ms, size] entry each) stays small: batch_size / min_batch_size <= this.
MAX_SUB_BATCHES = 1_000
# min_batch_size when not given: 1 % of batch_size (at most 100 sub-batches per partition).
DEFAULT_MIN_SHARE = 100

GROW_AT_MOST = 1.2
SHRINK_AT_MOST = 0.5
# Predicted duration within [0.9, 1.0] x target: leave the size alone (GitLab's 90-95 %
# efficiency band, widened to the target itself since a sub-batch has no idle interval).
DEAD_BAND = (0.9, 1.0)
EMA_ALPHA = 0.4

PARAMS: dict[str, dict[str, Any]] = {
    "target_batch_ms": {
        "type": "integer",
        "minimum": 10,
        "maximum": 3_600_000,
        "title": "Target sub-batch duration (ms)",
        "description": "Apply each partition in sub-batches sized to take about this long "
        "(GitLab's batch optimizer); leave empty for one transaction per partition.",
    },
    "min_batch_size": {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000_000,
        "title": "Smallest sub-batch (keys)",
        "description": "Default: 1 % of the keys per batch. The first sub-batch has this size.",
    },
    "max_batch_size": {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000_000,
        "title": "Largest sub-batch (keys)",
        "description": "Default: the keys per batch (a sub-batch never leaves its partition).",
    },
}


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """The resolved bounds of one backfill's sub-batches: milliseconds and key counts."""

    target_ms: int
    min_size: int
    max_size: int

    @classmethod
    def resolve(cls, backfill: Mapping[str, Any]) -> Adaptive | None:
        """From a backfill's params (`batch_size` default 1000 filled in): None without
        `target_batch_ms`. Defaults: max = batch_size, min = 1 % of it (at most max)."""
        if backfill.get("target_batch_ms") is None:
            return None
        size = int(backfill.get("batch_size", 1000))
        top = int(backfill.get("max_batch_size", size))
        bottom = backfill.get("min_batch_size")
        if bottom is None:
            bottom = min(top, max(1, math.ceil(size / DEFAULT_MIN_SHARE)))
        return cls(int(backfill["target_batch_ms"]), int(bottom), top)

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Adaptive | None:
        """From a pinned stage manifest (`backfill.adaptive`), or None: a manifest pinned
        without one (every manifest before this) runs one transaction per partition."""
        found = (manifest.get("backfill") or {}).get("adaptive")
        if not isinstance(found, Mapping):
            return None
        return cls(int(found["target_ms"]), int(found["min_size"]), int(found["max_size"]))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def sentence(self) -> str:
        """The preview's and review's words for it."""
        return (
            f"sub-batches of {self.min_size:,} to {self.max_size:,} keys, each sized to take "
            f"about {self.target_ms:,} ms"
        )


def params_errors(params: Mapping[str, Any]) -> list[ComponentError]:
    """What the schema cannot say about a backfill's bounds, with paths under `params.`:
    min above max, max above the partition (`batch_size`), more than MAX_SUB_BATCHES
    sub-batches at the smallest size, a target the statement timeout would cut short.
    Bounds without `target_batch_ms` do nothing: a warning. [] for statement lists."""
    backfill = params.get("backfill")
    if not isinstance(backfill, Mapping):
        return []
    at = "params.backfill."
    size = int(backfill.get("batch_size", 1000))
    found: list[ComponentError] = []
    top, bottom = backfill.get("max_batch_size"), backfill.get("min_batch_size")
    if top is not None and top > size:
        found.append(
            ComponentError(
                f"max_batch_size {top:,} is above batch_size {size:,}: a sub-batch never "
                "leaves its partition (the key range the approval pinned); raise batch_size "
                "or lower max_batch_size",
                code=ADAPTIVE_BOUNDS,
                path=at + "max_batch_size",
            )
        )
    if top is not None and bottom is not None and bottom > top:
        found.append(
            ComponentError(
                f"min_batch_size {bottom:,} is above max_batch_size {top:,}",
                code=ADAPTIVE_BOUNDS,
                path=at + "min_batch_size",
            )
        )
    elif top is None and bottom is not None and bottom > size:
        # max_batch_size defaults to batch_size: the same refusal as an explicit max.
        found.append(
            ComponentError(
                f"min_batch_size {bottom:,} is above batch_size {size:,} (the largest a "
                "sub-batch can be): lower min_batch_size or raise batch_size",
                code=ADAPTIVE_BOUNDS,
                path=at + "min_batch_size",
            )
        )
    if bottom is not None and math.ceil(size / bottom) > MAX_SUB_BATCHES:
        found.append(
            ComponentError(
                f"batch_size {size:,} in sub-batches of min_batch_size {bottom:,} could take "
                f"{math.ceil(size / bottom):,} sub-batches; at most {MAX_SUB_BATCHES:,} per "
                "partition: raise min_batch_size or lower batch_size",
                code=ADAPTIVE_TOO_MANY_SUB_BATCHES,
                path=at + "min_batch_size",
            )
        )
    target = backfill.get("target_batch_ms")
    timeout = int(params.get("statement_timeout_ms", 30_000))
    if target is not None and target >= timeout:
        found.append(
            ComponentError(
                f"target_batch_ms {target:,} is not below statement_timeout_ms {timeout:,}: "
                "sub-batches sized to take that long would be cancelled",
                code=ADAPTIVE_TARGET_ABOVE_TIMEOUT,
                path=at + "target_batch_ms",
            )
        )
    if target is None and (top is not None or bottom is not None):
        found.append(
            ComponentError(
                "min_batch_size and max_batch_size only bound adaptive sub-batches: without "
                "target_batch_ms each partition runs in one transaction",
                code=ADAPTIVE_UNUSED,
                path=at + ("min_batch_size" if bottom is not None else "max_batch_size"),
                warning=True,
            )
        )
    return found


class Optimizer:
    """The next sub-batch's size in keys from the durations of the ones before.

    `size` starts at `min_size` (the cautious start: a table's real cost is unknown until a
    sub-batch ran). `observe(keys, ms)` takes a finished sub-batch's key span and duration
    and returns the next size, always within [min_size, max_size].
    """

    def __init__(self, plan: Adaptive) -> None:
        self.plan = plan
        self.size = plan.min_size
        self.ms_per_key: float | None = None  # EMA

    def observe(self, keys: int, ms: float) -> int:
        rate = max(ms, 0.0) / max(keys, 1)
        if self.ms_per_key is None:
            self.ms_per_key = rate
        else:
            self.ms_per_key = EMA_ALPHA * rate + (1 - EMA_ALPHA) * self.ms_per_key
        # Believe a slow sub-batch at once: its locks were held that long.
        cost = max(self.ms_per_key, rate)
        predicted = cost * self.size
        low, high = (b * self.plan.target_ms for b in DEAD_BAND)
        if low <= predicted <= high:
            return self.size
        factor = GROW_AT_MOST if predicted <= 0 else self.plan.target_ms / predicted
        factor = min(GROW_AT_MOST, max(SHRINK_AT_MOST, factor))
        # Round away from the current size, so a size of 1 can still grow.
        grown = self.size * factor
        nxt = math.ceil(grown) if factor > 1 else math.floor(grown)
        self.size = min(self.plan.max_size, max(self.plan.min_size, nxt))
        return self.size


Step = Callable[[int, int], tuple[int, str]]


def run(
    plan: Adaptive,
    pieces: list[tuple[int, int]],
    step: Step,
    *,
    between: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Apply `pieces` (disjoint inclusive key intervals not yet in the ledger, in order) as
    adaptive sub-batches: `step(first, last)` applies one in its own transaction and returns
    (rows changed, "applied" | "already_applied"); `between()` runs before each (the
    heartbeat: an aborted run or a lost lease stops the partition between sub-batches).

    Returns {"rows_affected", "applied" (bool: any sub-batch committed), "sub_batches":
    [[first, last, rows, ms, size], ...]} where size is the size the optimizer asked for
    (first..last may be shorter: the end of a piece) and ms is the step's wall time,
    rounded. A step that raises ComponentError is re-raised with the sub-batches already
    committed named in its message (they stay in the ledger; a retry does only the rest).
    """
    optimizer = Optimizer(plan)
    done: list[list[int]] = []
    rows = 0
    applied = False
    for piece_first, piece_last in pieces:
        at = piece_first
        while at <= piece_last:
            between()
            size = optimizer.size
            last = min(piece_last, at + size - 1)
            started = clock()
            try:
                n, ledger = step(at, last)
            except ComponentError as exc:
                raise _with_progress(exc, done, at, last) from None
            ms = (clock() - started) * 1000
            done.append([at, last, n, round(ms), size])
            rows += n
            applied = applied or ledger == "applied"
            if ledger == "applied":
                # A sub-range the ledger already covered (a concurrent delivery) measured
                # nothing about the statement's cost: the size stays.
                optimizer.observe(last - at + 1, ms)
            at = last + 1
    return {"rows_affected": rows, "applied": applied, "sub_batches": done}


def _with_progress(
    exc: ComponentError, done: list[list[int]], first: int, last: int
) -> ComponentError:
    if not done:
        return exc
    note = (
        f" (sub-batch {len(done)}, keys {first}..{last}, rolled back; "
        f"{len(done)} earlier sub-batch{'es' if len(done) != 1 else ''} up to key "
        f"{done[-1][1]} committed and ledgered: a retry applies only the rest)"
    )
    return ComponentError(
        exc.message + note,
        code=exc.code,
        path=exc.path,
        permanent=exc.permanent,
        detail=exc.detail,
    )
