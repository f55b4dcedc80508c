"""Database health checks before each `deploy.migrate` batch on a PostgreSQL target.

Three checks, each optional, configured per stage (`params.health`) and/or per target
(`HXO_DATABASE_TARGETS[name]["health"]`; a stage's keys override the target's):

- `max_replication_lag_ms` / `max_replication_lag_bytes`: the worst replica in
  `pg_stat_replication` (`replay_lag`; `pg_current_wal_lsn() - replay_lsn`). A primary without
  replicas is healthy. A role that cannot read the replicas' positions (the columns are NULL
  without `pg_monitor` / `pg_read_all_stats`) is reported unhealthy, never silently healthy.
- `max_transaction_age_s`: client sessions of this database whose transaction began more than
  that many seconds ago (`pg_stat_activity.xact_start`): they hold back vacuum and keep the
  locks a batch may need. HXO's own sessions (its `application_name`) and this check's session
  are left out. Other roles' sessions are visible only to a role with `pg_read_all_stats`.
- `max_lock_waits`: sessions of this database waiting for a lock (`pg_locks` not granted,
  which every role can read), HXO's own excluded: more than that many means the target is
  already contended, and a batch would add to the queue.

Unhealthy, the executor raises `blueprints_app.registry.Throttled` before it opens the batch's
transaction: no partition fails or spends an attempt for it; the engine (runs_app.engine.health)
holds the stage and shows the reason. The idea is GitLab's batched background migrations'
health indicators (autovacuum on the tables, WAL rate, patroni lag), reduced to what one
PostgreSQL session can see.

On a SQLite target there is nothing to measure (one writer, no replicas): the options are
refused at validation (`health_checks_unsupported`), never silently ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from blueprints_app.registry import ComponentError, ExecutionContext, Throttled
from blueprints_app.validation import schema_validator
from runs_app.targets import POSTGRESQL, Target, TargetConnection, connect

log = logging.getLogger(__name__)

HEALTH_CHECKS_UNSUPPORTED = "health_checks_unsupported"
HEALTH_NO_CHECK = "health_no_check"
INVALID_HEALTH = "invalid_health"

CHECK_KEYS = (
    "max_replication_lag_ms",
    "max_replication_lag_bytes",
    "max_transaction_age_s",
    "max_lock_waits",
)
DEFAULT_RECHECK_MS = 5_000

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "title": "Database health checks (PostgreSQL)",
    "description": "Before each batch: wait while the target is unhealthy (no attempt spent).",
    # When a batch runs, never what it does: out of content ids (runs_app.manifest).
    "x-hxo-no-effect": True,
    "properties": {
        "max_replication_lag_ms": {
            "type": "integer",
            "minimum": 0,
            "maximum": 86_400_000,
            "title": "Max replica replay lag (ms)",
        },
        "max_replication_lag_bytes": {
            "type": "integer",
            "minimum": 0,
            "maximum": 1 << 50,
            "title": "Max replica lag (WAL bytes)",
        },
        "max_transaction_age_s": {
            "type": "integer",
            "minimum": 1,
            "maximum": 86_400,
            "title": "Max transaction age of other sessions (s)",
        },
        "max_lock_waits": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10_000,
            "title": "Max sessions waiting for a lock",
        },
        "recheck_ms": {
            "type": "integer",
            "minimum": 100,
            "maximum": 600_000,
            "default": DEFAULT_RECHECK_MS,
            "title": "Check again after (ms)",
        },
    },
}


def schema_problems(config: object, path: str) -> list[ComponentError]:
    """`config` against HEALTH_SCHEMA, each problem with its field path (`path` + key), plus
    `health_no_check` when it names no check (a `recheck_ms` alone would check nothing)."""
    found = [
        ComponentError(
            err.message,
            code=INVALID_HEALTH,
            path=".".join([path, *(str(p) for p in err.absolute_path)]),
            permanent=True,
        )
        for err in schema_validator(HEALTH_SCHEMA).iter_errors(config)
    ]
    if not found and isinstance(config, dict) and not any(k in config for k in CHECK_KEYS):
        found.append(
            ComponentError(
                f"health names no check: give one of {', '.join(CHECK_KEYS)}",
                code=HEALTH_NO_CHECK,
                path=path,
                permanent=True,
            )
        )
    return found


def vendor_problem(target: Target, path: str) -> ComponentError | None:
    """`health_checks_unsupported` for a target that is not PostgreSQL, else None."""
    if target.vendor == POSTGRESQL:
        return None
    return ComponentError(
        f"database health checks need a PostgreSQL target; {target.name!r} is {target.vendor}, "
        "which has no replicas, no concurrent transactions and no lock queue to measure",
        code=HEALTH_CHECKS_UNSUPPORTED,
        path=path,
        permanent=True,
    )


def stage_problems(params: Mapping[str, Any], target: Target) -> list[ComponentError]:
    """What is wrong with a stage's `health` param on `target` (paths `params.health...`)."""
    if "health" not in params:
        return []
    found = schema_problems(params["health"], "params.health")
    refused = vendor_problem(target, "params.health")
    return found + ([refused] if refused else [])


def effective(params: Mapping[str, Any], target: Target) -> dict[str, Any] | None:
    """The checks that apply to a stage on `target`: the target's option, then the stage's
    keys over it; None when no check applies."""
    merged = {**dict(target.health), **dict(params.get("health") or {})}
    if not any(k in merged for k in CHECK_KEYS):
        return None
    merged.setdefault("recheck_ms", DEFAULT_RECHECK_MS)
    return merged


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check that failed: its name, what was measured, the limit, and a sentence."""

    check: str
    value: float
    limit: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Health:
    """The result of one round of checks on one target."""

    target: str
    findings: tuple[Finding, ...]

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def reason(self) -> str:
        """The sentence the run page shows, e.g. "waiting: 2 transactions older than 60 s
        (oldest 75 s) on target 'x'" (several findings joined by ';')."""
        found = "; ".join(f.message for f in self.findings)
        return f"waiting: {found} on target {self.target!r}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# The session's own `application_name` (HXO's connections all set one, "hxo" by default):
# HXO's sessions are left out of the counts, so a batch in flight never throttles the next.
OURS = "current_setting('application_name')"

REPLICATION_SQL = (
    "SELECT count(*), count(replay_lsn),"
    " max(EXTRACT(EPOCH FROM replay_lag) * 1000),"
    " CASE WHEN pg_is_in_recovery() THEN NULL"
    " ELSE max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) END"
    " FROM pg_stat_replication"
)
TRANSACTIONS_SQL = (
    "SELECT count(*), COALESCE(max(EXTRACT(EPOCH FROM (now() - xact_start))), 0)"
    " FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend'"
    f" AND application_name IS DISTINCT FROM {OURS}"
    " AND xact_start < now() - :age * interval '1 second'"
)
LOCK_WAITS_SQL = (
    "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE NOT l.granted AND a.datname = current_database() AND l.pid <> pg_backend_pid()"
    f" AND a.application_name IS DISTINCT FROM {OURS}"
)


def check(conn: TargetConnection, config: Mapping[str, Any]) -> Health:
    """Run the checks `config` names on `conn` (PostgreSQL, autocommit: no transaction is held
    across them). Read-only catalogue queries, one per check family."""
    findings: list[Finding] = []
    lag_ms = config.get("max_replication_lag_ms")
    lag_bytes = config.get("max_replication_lag_bytes")
    if lag_ms is not None or lag_bytes is not None:
        replicas, visible, worst_ms, worst_bytes = conn.execute(REPLICATION_SQL).fetchone()
        if replicas and not visible:
            findings.append(
                Finding(
                    "replication_lag",
                    replicas,
                    0,
                    f"{_plural(int(replicas), 'replica')} whose lag this role cannot read "
                    "(grant it pg_monitor)",
                )
            )
        else:
            if lag_ms is not None and worst_ms is not None and float(worst_ms) > lag_ms:
                findings.append(
                    Finding(
                        "replication_lag_ms",
                        round(float(worst_ms)),
                        lag_ms,
                        f"replica replay lag {float(worst_ms) / 1000:.1f} s "
                        f"(limit {lag_ms / 1000:g} s)",
                    )
                )
            if lag_bytes is not None and worst_bytes is not None and int(worst_bytes) > lag_bytes:
                findings.append(
                    Finding(
                        "replication_lag_bytes",
                        int(worst_bytes),
                        lag_bytes,
                        f"replica {int(worst_bytes):,} bytes of WAL behind (limit {lag_bytes:,})",
                    )
                )
    age = config.get("max_transaction_age_s")
    if age is not None:
        n, oldest = conn.execute(TRANSACTIONS_SQL, {"age": age}).fetchone()
        if n:
            findings.append(
                Finding(
                    "transaction_age",
                    int(n),
                    age,
                    f"{_plural(int(n), 'transaction')} older than {age} s "
                    f"(oldest {float(oldest):.0f} s)",
                )
            )
    waits = config.get("max_lock_waits")
    if waits is not None:
        (n,) = conn.execute(LOCK_WAITS_SQL).fetchone()
        if n > waits:
            findings.append(
                Finding(
                    "lock_waits",
                    int(n),
                    waits,
                    f"{_plural(int(n), 'session')} waiting for a lock (limit {waits})",
                )
            )
    return Health(conn.target.name, tuple(findings))


def gate(ctx: ExecutionContext, target: Target) -> None:
    """The hook an executor calls before a batch: returns when no check applies or all pass
    (telling the engine, `ctx.throttle_passed()`, so a waiting stage resumes), raises
    `Throttled` with the reason otherwise. Opens its own short connection and closes it, so
    nothing is held while the stage waits."""
    config = effective(ctx.params, target)
    if config is None or target.vendor != POSTGRESQL:
        return
    with connect(target, path="manifest.target") as conn:
        health = check(conn, config)
    if health.healthy:
        ctx.throttle_passed()
        return
    log.info("%s; checking again in %s ms", health.reason, config["recheck_ms"])
    raise Throttled(
        health.reason,
        retry_after_ms=config["recheck_ms"],
        detail={"target": target.name, "checks": [f.as_dict() for f in health.findings]},
    )
