"""How HXO scales past this machine: throughput, claim latency, lock waits and commits per
partition at 1, 2, 4 and 8 worker clusters on PostgreSQL + Redis (issue 16 §3;
docs/scaling.md reads its figures).

Each point starts N real `manage.py qcluster` processes (HXO_WORKERS=2 each, every one
standing for a worker host), applies one run, waits for its last partition and stops them:
- `noop`: N no-op partitions (bench/kinds.py), what orchestration alone costs;
- `assets.index`: the Font Awesome free 6.5.2 tree (tests/realmaterial), a few files per
  partition, each file read, hashed and upserted into the index: real reads and writes.

Measured per point:
- throughput: partitions / (last `finished_at` - first `started_at`), the engine's own
  timestamps, and the wall time from the apply to the run's end;
- claim latency: the wall time around each `claims.claim_batch` call in the workers
  (bench/claim_probe.py, loaded as a plugin by the clusters only), p50/p95 of the claims that
  took something, and the rows each claim took;
- lock waits: pg_stat_activity sampled every SAMPLE_S from another database's connection:
  mean backends active, waiting on a heavyweight lock (`Lock`: a row or transaction another
  transaction holds), on WAL (`LWLock`/`IO`), or idle inside a transaction (Python's turn);
- commits per partition: pg_stat_database `xact_commit` delta of the bench database over the
  point (the clusters are stopped before the second read, so their backends have flushed
  their statistics), less this process's own polls and the clusters' idle start-up/stop
  commits (measured once: `idle_commits_per_cluster`), over the partitions;
- effects: every partition succeeded and was claimed once (one ClaimLog row each); every file
  of the tree has its index row written by this run.

Before the points, `anatomy` counts in this process what one claim batch and one completion
cost in statements and transactions at batch sizes 1 and 64 (a Django execute wrapper), the
code's own count that docs/scaling.md builds its model on.

On this 2-core machine the curve flattens early: every cluster, PostgreSQL and Redis share
two cores. What it shows is contention (lock waits, claim latency, commits per partition as
clusters are added), not speed; the output says so.

Run as `python bench/scaling.py [--quick] [--clusters 1,2,4,8]`; prints a table on stderr and
one JSON object on stdout (bench/run.py stores it in latest.json as `scaling`). The database
(HXO_SCALING_PG, default `hxo_scaling`, dropped and created) and Redis database
(HXO_SCALING_REDIS, default db 12, flushed) are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("HXO_SCALING_PG", "postgres://postgres@127.0.0.1:5432/hxo_scaling")
REDIS_URL = os.environ.get("HXO_SCALING_REDIS", "redis://127.0.0.1:6379/12")
CLUSTER_NAME = "hxo-scaling"
WORKERS = 2  # HXO_WORKERS of every cluster, as the app's default
CLUSTERS_FULL = (1, 2, 4, 8)
CLUSTERS_QUICK = (1, 2)
NOOP_FULL, NOOP_QUICK = 10_000, 2_000
# Files per assets.index partition: small enough for a few hundred partitions over Font
# Awesome's 2,000-odd files, so the claims, not one big partition, set the pace.
REAL_MAX_FILES_FULL, REAL_MAX_FILES_QUICK = 8, 24
# Quick mode (`make bench QUICK=1`, three minutes for every section) runs the no-op curve
# at 1 and 2 clusters only: each point starts and stops its clusters (10-15 s here).
QUICK_SKIP = "quick mode runs the no-op workload only (`make bench` runs this one)"
SAMPLE_S = 0.05
# Connections one cluster of WORKERS workers holds at most: a worker and its drainer's
# heartbeat thread each, the monitor and the scheduler (measured: `max_backends`).
CONNECTIONS_PER_CLUSTER = 2 * WORKERS + 2
# A point is measured only when the server has this many connections to spare beyond it:
# the PostgreSQL server here is shared with other test runs.
CONNECTION_MARGIN = 15
# Adding a cluster that raises throughput by less than this share is where the curve flattens.
FLAT_GAIN = 0.10
NOTE = (
    "every cluster, PostgreSQL and Redis share this machine's cores: past the core count "
    "the curve shows contention (claim latency, lock waits, commits per partition), not the "
    "speed N hosts would reach; docs/scaling.md models that from these counts"
)


# --- judging (pure: tests/bench/test_scaling.py) ------------------------------------------


# Seconds without a new claim after which a point is failed rather than waited for.
STALL_S = 120


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values` by linear interpolation, None when empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def claim_stats(lines: list[str], since: float, until: float) -> dict[str, Any]:
    """Claims from claim_probe lines (`wall \\t seconds \\t claimed \\t limit`) made in
    [since, until]: how many took something, how many found nothing, mean rows per claim and
    the p50/p95 wall time of the claims that took something, in ms. Malformed lines are
    counted in `unreadable`, never guessed."""
    took: list[float] = []
    rows = empty = unreadable = 0
    for line in lines:
        parts = line.strip().split("\t")
        try:
            wall, seconds, claimed = float(parts[0]), float(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            unreadable += 1
            continue
        if not since <= wall <= until:
            continue
        if claimed:
            took.append(seconds * 1000)
            rows += claimed
        else:
            empty += 1
    p50, p95 = percentile(took, 50), percentile(took, 95)
    return {
        "claims": len(took),
        "empty_claims": empty,
        "rows_per_claim": round(rows / len(took), 2) if took else None,
        "p50_ms": round(p50, 2) if p50 is not None else None,
        "p95_ms": round(p95, 2) if p95 is not None else None,
        "unreadable": unreadable,
    }


TABLE_NAME = re.compile(r'"?((?:runs_app|notify_app|django_q|hxo_site|blueprints_app)_\w+)"?')


def statement_kind(sql: str) -> str:
    """A statement as its verb and the first HXO or django-q2 table it names
    (`UPDATE runs_app_runstage`): what a lock waiter was trying to do, without its values."""
    words = sql.split()
    verb = words[0].upper() if words else "?"
    table = TABLE_NAME.search(sql)
    return f"{verb} {table.group(1)}" if table else verb


def wait_stats(
    samples: list[list[tuple[str, str | None, str | None, int]]],
    waiting: list[list[str]] | None = None,
) -> dict[str, Any]:
    """pg_stat_activity samples (each a list of (state, wait_event_type, wait_event, count)
    rows) → per-sample means: backends, active, waiting on a heavyweight lock, on WAL
    (LWLock/IO while active), idle in transaction; the peak backend count; and each wait
    event's mean, largest first. `lock_share` is lock waiters over active backends. With
    `waiting` (each sample's statements of the backends waiting on a lock),
    `lock_waits_by_statement` is each statement kind's mean number of waiters."""
    n = len(samples)
    if not n:
        return {"samples": 0}
    total = active = lock = wal = idle_tx = 0
    peak = 0
    events: Counter[str] = Counter()
    for sample in samples:
        in_sample = 0
        for state, wtype, wevent, count in sample:
            in_sample += count
            if state == "active":
                active += count
                if wtype == "Lock":
                    lock += count
                elif wtype in ("LWLock", "IO"):
                    wal += count
                if wtype:
                    events[f"{wtype}:{wevent}"] += count
            elif state and state.startswith("idle in transaction"):
                idle_tx += count
        total += in_sample
        peak = max(peak, in_sample)
    return {
        "samples": n,
        "mean_backends": round(total / n, 2),
        "max_backends": peak,
        "mean_active": round(active / n, 2),
        "mean_lock_waiting": round(lock / n, 3),
        "mean_lwlock_or_io": round(wal / n, 3),
        "mean_idle_in_transaction": round(idle_tx / n, 2),
        "lock_share": round(lock / active, 3) if active else 0.0,
        "events": {k: round(v / n, 3) for k, v in events.most_common(6)},
        "lock_waits_by_statement": {
            k: round(v / n, 3)
            for k, v in Counter(statement_kind(q) for w in waiting or [] for q in w).most_common(6)
        },
    }


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The curve per workload: each measured point's throughput, speedup over the fewest
    clusters measured and efficiency (speedup / cluster ratio), and `flattens_at`: the first
    cluster count whose throughput gain over the previous point is below FLAT_GAIN (None when
    it keeps rising). Skipped or failed points are listed with why, never plotted."""
    curves: dict[str, Any] = {}
    for workload in dict.fromkeys(p["workload"] for p in points):
        rows = [p for p in points if p["workload"] == workload]
        measured = sorted((p for p in rows if p.get("per_second")), key=lambda p: p["clusters"])
        curve = []
        flattens_at = None
        for i, p in enumerate(measured):
            base = measured[0]
            speedup = p["per_second"] / base["per_second"]
            curve.append(
                {
                    "clusters": p["clusters"],
                    "per_second": round(p["per_second"], 1),
                    "speedup": round(speedup, 2),
                    "efficiency": round(speedup / (p["clusters"] / base["clusters"]), 2),
                }
            )
            if i and flattens_at is None:
                gain = p["per_second"] / measured[i - 1]["per_second"] - 1
                if gain < FLAT_GAIN:
                    flattens_at = p["clusters"]
        curves[workload] = {
            "curve": curve,
            "flattens_at": flattens_at,
            "not_measured": [
                {"clusters": p["clusters"], "why": p.get("skipped") or p.get("error")}
                for p in rows
                if not p.get("per_second")
            ],
        }
    return curves


def judge(result: dict[str, Any]) -> dict[str, Any]:
    """The section's verdict: `measured` when every point of the full curve (CLUSTERS_FULL
    clusters, both workloads) ran, each exactly once with its effects; `failed` when a point
    lost or repeated work, whatever its speed; else `not_judged` with why (a reduced curve,
    a point skipped or failed, the services not reachable). The curve has no target: on 2
    cores it shows contention, not speed."""
    points = result.get("points", [])
    if result.get("error"):
        return {"status": "not_judged", "why": result["error"]}
    broken = [p for p in points if p.get("per_second") and not p.get("exactly_once")]
    if broken:
        where = ", ".join(f"{p['workload']} at {p['clusters']}" for p in broken)
        return {"status": "failed", "why": f"work lost or repeated: {where}"}
    why = []
    missing = [p for p in points if not p.get("per_second")]
    if missing:
        why.append(
            "points not measured: "
            + "; ".join(
                f"{p['workload']} at {p['clusters']}: {p.get('skipped') or p.get('error')}"
                for p in missing
            )
        )
    clusters = tuple(sorted({p["clusters"] for p in points}))
    if clusters != CLUSTERS_FULL:
        why.append(
            f"a reduced curve ({', '.join(map(str, clusters)) or 'no'} clusters); the full "
            f"curve is {', '.join(map(str, CLUSTERS_FULL))} (`make bench`)"
        )
    if why:
        return {"status": "not_judged", "why": "; ".join(why)}
    return {"status": "measured", "why": NOTE}


def table_lines(result: dict[str, Any]) -> list[str]:
    """The scaling section as table lines for `make bench` (bench/run.py `table`)."""
    if not result:
        return []
    verdict = result.get("verdict") or judge(result)
    head = f"scaling (PostgreSQL + Redis, {WORKERS} workers per cluster): {verdict['status']}"
    lines = [head, f"  {verdict['why']}"]
    if result.get("error"):
        return lines
    lines.append(
        "  workload      clusters  part/s  speedup  claim p50/p95 ms  rows/claim  "
        "commits/part  lock-wait  active"
    )
    for p in result.get("points", []):
        if not p.get("per_second"):
            lines.append(
                f"  {p['workload']:<13} {p['clusters']:>8}  not measured: "
                f"{p.get('skipped') or p.get('error')}"
            )
            continue
        curve = result.get("curve", {}).get(p["workload"], {}).get("curve", [])
        speedup = next((c["speedup"] for c in curve if c["clusters"] == p["clusters"]), None)
        c, w, k = p["claims"], p["waits"], p["commits"]
        lines.append(
            f"  {p['workload']:<13} {p['clusters']:>8} {p['per_second']:7.0f} "
            f"{_fmt(speedup, '7.2f')}x  {_fmt(c['p50_ms'], '7.1f')}/{_fmt(c['p95_ms'], '<7.1f')}  "
            f"{_fmt(c['rows_per_claim'], '10.1f')}  {_fmt(k['per_partition'], '12.3f')}  "
            f"{_fmt(w.get('mean_lock_waiting'), '9.2f')}  {_fmt(w.get('mean_active'), '6.2f')}"
        )
    for name, row in result.get("curve", {}).items():
        if row.get("flattens_at"):
            lines.append(f"  {name}: flattens at {row['flattens_at']} clusters")
    return lines


def _fmt(value: Any, spec: str) -> str:
    """`value` formatted by `spec`, or a dash as wide when there is no figure."""
    if isinstance(value, (int, float)):
        return format(value, spec)
    width = re.match(r"[<>^]?(\d*)", spec).group(1)  # type: ignore[union-attr]
    return format("-", f">{width}" if width else "")


# --- measuring ----------------------------------------------------------------------------


def admin_conn() -> Any:
    """An autocommit connection to the server's `postgres` database: its reads of the
    statistics views are no transactions of the bench database."""
    import psycopg

    return psycopg.connect(PG_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True)


DB_NAME = PG_URL.rsplit("/", 1)[1]


def prepare_services() -> None:
    """A fresh bench database and an empty Redis database (both this bench's own)."""
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()
    with admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def db_counters(conn: Any) -> dict[str, int]:
    """pg_stat_database's transaction and row counters of the bench database."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
        "FROM pg_stat_database WHERE datname = %s",
        [DB_NAME],
    ).fetchone()
    return dict(zip(("commits", "rollbacks", "inserted", "updated", "deleted"), row, strict=True))


def settle(conn: Any, deadline_s: float = 60) -> None:
    """Wait until no backend is connected to the bench database, then a moment: a backend
    flushes its statistics as it exits, just after it leaves pg_stat_activity."""
    from bench.harness import wait

    def gone() -> bool:
        return not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [DB_NAME]
        ).fetchone()[0]

    wait(gone, timeout=deadline_s, poll=0.05)
    time.sleep(0.3)


def spare_connections(conn: Any) -> int:
    return conn.execute(
        "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity"
    ).fetchone()[0]


class Sampler:
    """pg_stat_activity of the bench database every SAMPLE_S seconds, on its own thread and
    connection (to another database, so the samples are no commits of the bench's)."""

    def __init__(self) -> None:
        self.samples: list[list[tuple[str, str | None, str | None, int]]] = []
        self.waiting: list[list[str]] = []  # per sample: the statements waiting on a lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pg-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        with admin_conn() as conn:
            while not self._stop.wait(SAMPLE_S):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND backend_type = 'client backend'"
                    " GROUP BY 1, 2, 3",
                    [DB_NAME],
                ).fetchall()
                self.samples.append([tuple(r) for r in rows])
                self.waiting.append(
                    [
                        q
                        for (q,) in conn.execute(
                            "SELECT left(query, 200) FROM pg_stat_activity WHERE datname = %s"
                            " AND state = 'active' AND wait_event_type = 'Lock'",
                            [DB_NAME],
                        )
                    ]
                )


class Clusters:
    """N `manage.py qcluster` processes, each its own session, stopped by SIGTERM to each main
    process only (a clean drain, as the README's worker hosts), killed after a minute."""

    def __init__(self, n: int, env: dict[str, str], logs: Path) -> None:
        self.n, self.env, self.logs = n, env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Clusters:
        from django_q.conf import Conf
        from django_q.status import Stat

        from bench.harness import wait

        for i in range(self.n):
            log = (self.logs / f"cluster-{self.n}-{i}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(ROOT / "manage.py"), "qcluster"],
                    env=self.env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

        def ready() -> bool:
            dead = [p.pid for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"qcluster {dead} exited at start; see {self.logs}")
            up = [s for s in Stat.get_all() if s.status in (Conf.IDLE, Conf.WORKING)]
            return len(up) >= self.n

        try:
            wait(ready, timeout=180, poll=0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []


def cluster_env(n: int, probe_dir: Path) -> dict[str, str]:
    """The environment of every cluster of a point: the bench's database, broker, workspace
    and plugins, and a per-run drainer cap equal to the cluster slots (HXO_MAX_CONCURRENCY
    defaults to 4, which would cap one run at 4 drainers whatever the clusters)."""
    return {
        **os.environ,
        "HXO_WORKERS": str(WORKERS),
        "HXO_MAX_CONCURRENCY": str(n * WORKERS),
        "HXO_PLUGINS": "bench.kinds,bench.claim_probe",
        "HXO_CLAIM_PROBE_DIR": str(probe_dir),
    }


def noop_stage(n: int) -> dict[str, Any]:
    from bench.kinds import BENCH_KIND

    return {
        "id": "noop",
        "kind": BENCH_KIND,
        "partitioner": "bench_count",
        "executor": "bench_noop",
        "params": {"items": n},
    }


def assets_stage(max_files: int) -> dict[str, Any]:
    return {
        "id": "assets",
        "kind": "assets.index",
        "partitioner": "by_filesize",
        "executor": "index_assets",
        "params": {
            "workspace": "fontawesome",
            "root": ".",
            "chunk_size_mb": 1,
            "max_files": max_files,
        },
    }


def measure(
    workload: str,
    stage: dict[str, Any],
    n: int,
    *,
    var: Path,
    tree: Path,
    idle_per_cluster: float,
) -> dict[str, Any]:
    """One point: N clusters drain one run of `stage`; see the module docstring."""
    import psycopg
    import redis
    from django.db import connections

    from bench.harness import bench_user
    from runs_app import services
    from runs_app.models import AssetIndexEntry, ClaimLog, Partition, Run, RunStage

    point: dict[str, Any] = {"workload": workload, "clusters": n}
    began = time.monotonic()
    with admin_conn() as admin:
        spare = spare_connections(admin)
        need = n * CONNECTIONS_PER_CLUSTER + CONNECTION_MARGIN
        if spare < need:
            point["skipped"] = (
                f"the shared PostgreSQL server has {spare} connections to spare, "
                f"{n} clusters need about {need}"
            )
            return point
        redis.Redis.from_url(REDIS_URL).flushdb()
        probe_dir = Path(tempfile.mkdtemp(prefix=f"probe-{workload}-{n}-", dir=var))
        user = bench_user()
        plan = services.plan_create(
            actor=user, document={"name": f"scaling {workload} {n}", "stages": [stage]}
        )
        connections.close_all()
        settle(admin)
        before = db_counters(admin)
        polls = 0
        with (
            Clusters(n, cluster_env(n, probe_dir), var) as _clusters,
            psycopg.connect(PG_URL, autocommit=True) as poll,
            Sampler() as sampler,
        ):
            started = time.time()
            # force_rerun: every point executes its partitions, none reuses an earlier run's.
            run = services.run_apply(plan=plan, actor=user, force_rerun=True)
            connections.close_all()
            deadline = time.monotonic() + 1800
            # A run whose partitions stop moving (every drainer failing on its first claim,
            # say: the worker logs it and the run waits for its reconciler) fails the point
            # after STALL_S instead of holding the bench for the whole deadline.
            # The stages' pending counters (a row per stage, moved by every claim), not a
            # count over the claim log: this poll runs every 100 ms inside the measurement.
            moved_at, last_pending = time.monotonic(), -1
            while True:
                polls += 1
                done, pending = poll.execute(
                    f"SELECT r.finished_at IS NOT NULL, (SELECT SUM(s.pending) FROM "
                    f"{RunStage._meta.db_table} s WHERE s.run_id = r.id) "
                    f"FROM {Run._meta.db_table} r WHERE r.id = %s",
                    [run.pk],
                ).fetchone()
                if done:
                    break
                now = time.monotonic()
                if pending != last_pending:
                    moved_at, last_pending = now, pending
                if now - moved_at > STALL_S:
                    raise TimeoutError(
                        f"{workload} at {n} clusters: no partition claimed for {STALL_S} s "
                        f"({pending} pending); see the clusters' logs in {var}"
                    )
                if now > deadline:
                    raise TimeoutError(f"{workload} at {n} clusters did not finish")
                time.sleep(0.1)
            ended = time.time()
        settle(admin)
        after = db_counters(admin)

    run.refresh_from_db()
    parts = Partition.objects.filter(run=run)
    total = parts.count()
    succeeded = parts.filter(state="succeeded").count()
    claimed = ClaimLog.objects.filter(partition__run=run)
    claim_rows = claimed.count()
    once = claimed.values("partition_id").distinct().count()
    first = parts.order_by("started_at").values_list("started_at", flat=True).first()
    last = parts.order_by("-finished_at").values_list("finished_at", flat=True).first()
    exec_s = (last - first).total_seconds() if first and last else None
    effects: dict[str, Any] = {"partitions": total, "succeeded": succeeded}
    exactly_once = run.state == "succeeded" and succeeded == total == claim_rows == once
    if workload == "assets.index":
        from tests.realmaterial.material import find_files

        files = find_files(tree)
        rows = AssetIndexEntry.objects.filter(workspace="fontawesome")
        effects |= {
            "files": len(files),
            "index_rows_by_this_run": rows.filter(run_id=run.pk).count(),
            "index_rows": rows.count(),
        }
        exactly_once = exactly_once and (
            effects["index_rows_by_this_run"] == effects["index_rows"] == len(files)
        )
    lines: list[str] = []
    for f in probe_dir.glob("*.tsv"):
        lines += f.read_text(encoding="ascii").splitlines()
    raw = after["commits"] - before["commits"]
    idle = round(idle_per_cluster * n, 1)
    commits = raw - polls - idle
    point |= {
        "state": run.state,
        "exactly_once": exactly_once,
        "effects": effects,
        "wall_s": round(ended - started, 3),
        "exec_s": round(exec_s, 3) if exec_s else None,
        "per_second": round(total / exec_s, 1) if exec_s else None,
        "claims": claim_stats(lines, started, ended),
        "claim_batches": claimed.values("owner", "claimed_at").distinct().count(),
        "commits": {
            "raw": raw,
            "own_polls": polls,
            "idle_clusters": idle,
            "total": round(commits, 1),
            "per_partition": round(commits / total, 4) if total else None,
            "rollbacks": after["rollbacks"] - before["rollbacks"],
        },
        "rows_written_per_partition": round(
            sum(after[k] - before[k] for k in ("inserted", "updated", "deleted")) / total, 2
        )
        if total
        else None,
        "waits": wait_stats(sampler.samples, sampler.waiting),
        # The whole point, clusters' start and stop included: what it costs the bench.
        "point_s": round(time.monotonic() - began, 1),
    }
    return point


def idle_commits_per_cluster(var: Path) -> float:
    """Commits one cluster makes starting and stopping with nothing to do (its scheduler,
    its monitor): subtracted from every point's count, per cluster."""
    from django.db import connections

    connections.close_all()
    with admin_conn() as admin:
        settle(admin)
        before = db_counters(admin)
        with Clusters(1, cluster_env(1, var), var):
            pass
        settle(admin)
        return float(db_counters(admin)["commits"] - before["commits"])


def anatomy() -> dict[str, Any]:
    """Statements and transactions of one claim batch and one completion, at batch sizes 1
    and 64, counted by a Django execute wrapper in this process: every statement (an
    executemany counts its rows), every transaction (a commit, or a statement outside any
    atomic block). The drainer's other per-batch reads (the run's state, the claimed rows,
    the reuse lookup) are counted under `execute`."""
    from django.db import connection

    from bench.harness import bench_user
    from runs_app import services
    from runs_app.engine import claims, execute, wakeups
    from runs_app.engine.heartbeat import Heartbeat
    from runs_app.models import Run

    counts = {"statements": 0, "transactions": 0}

    def wrapper(run_sql: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        counts["statements"] += len(params) if many else 1
        if not connection.in_atomic_block:
            counts["transactions"] += 1
        return run_sql(sql, params, many, context)

    real_commit = connection.commit

    def commit() -> None:
        counts["transactions"] += 1
        real_commit()

    saved = wakeups.enqueue_drainers, wakeups.enqueue_partitioner
    wakeups.enqueue_drainers = wakeups.enqueue_partitioner = lambda *a, **k: None
    user = bench_user()
    plan = services.plan_create(
        # One partition more than the two batches: neither batch finishes the stage, whose
        # one-off cost (the stage's and run's moves, receipt, event) is no per-batch cost.
        actor=user,
        document={"name": "scaling anatomy", "stages": [noop_stage(66)]},
    )
    run = services.run_partition(
        run_id=services.run_apply(plan=plan, actor=user, force_rerun=True).pk
    )
    out: dict[str, Any] = {}
    owner = claims.new_owner()
    rc = execute.RunContext(run.pk)
    connection.commit = commit  # type: ignore[method-assign]
    try:
        with Heartbeat(owner, run.pk) as hb, connection.execute_wrapper(wrapper):
            for size in (1, 64):
                phase: dict[str, Any] = {}
                counts.update(statements=0, transactions=0)
                # The drainer reads the run's state before each claim: counted with it.
                Run.objects.filter(pk=run.pk).values_list("state", flat=True).first()
                held = claims.claim_batch(run.pk, owner, size)
                phase["claim"] = dict(counts)
                assert len(held) == size, (len(held), size)
                counts.update(statements=0, transactions=0)
                buffer = execute.OutcomeBuffer()
                hb.hold(held)
                execute.execute_claims(rc, held, hb, buffer)
                phase["execute"] = dict(counts)
                counts.update(statements=0, transactions=0)
                buffer.flush()
                phase["complete"] = dict(counts)
                for c in held:
                    hb.release(c.partition_id)
                phase["per_partition"] = {
                    k: round(sum(phase[p][k] for p in ("claim", "execute", "complete")) / size, 3)
                    for k in ("statements", "transactions")
                }
                out[str(size)] = phase
    finally:
        del connection.commit
        wakeups.enqueue_drainers, wakeups.enqueue_partitioner = saved
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clusters", default="", help="comma-separated cluster counts")
    parser.add_argument("--noop", type=int, default=0, help="no-op partitions per point")
    parser.add_argument("--real-max-files", type=int, default=0, help="files per partition")
    args = parser.parse_args()
    clusters = (
        tuple(int(c) for c in args.clusters.split(",") if c)
        if args.clusters
        else (CLUSTERS_QUICK if args.quick else CLUSTERS_FULL)
    )
    noop = args.noop or (NOOP_QUICK if args.quick else NOOP_FULL)
    max_files = args.real_max_files or (REAL_MAX_FILES_QUICK if args.quick else REAL_MAX_FILES_FULL)
    result: dict[str, Any] = {
        "database": "postgresql",
        "broker": "redis",
        "workers_per_cluster": WORKERS,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "note": NOTE,
        "points": [],
    }
    try:
        prepare_services()
    except Exception as exc:
        result["error"] = f"PostgreSQL or Redis not reachable: {exc}"
        finish(result)
        return
    began = time.monotonic()
    var = Path(tempfile.mkdtemp(prefix="hxo-bench-scaling-"))
    from tests.realmaterial.material import CATALOGUE, fetch, unpack

    item = CATALOGUE["fontawesome"]
    try:
        tree = unpack(item, fetch(item)[0], var / "fontawesome")
    except Exception as exc:
        result["error"] = f"Font Awesome 6.5.2 could not be fetched: {exc}"
        finish(result)
        return
    os.environ.update(
        {
            "DATABASE_URL": PG_URL,
            "HXO_BROKER": "redis",
            "REDIS_URL": REDIS_URL,
            "HXO_CLUSTER_NAME": CLUSTER_NAME,
            "HXO_WORKSPACES": json.dumps({"fontawesome": str(tree)}),
            "HXO_VAR_DIR": str(var),
            "HXO_LOG_LEVEL": "WARNING",
        }
    )
    from bench.harness import setup_django

    setup_django(str(var))
    from django_q.models import Schedule

    # The reconciler's schedule would fire inside a point and add its own transactions; each
    # point drains one healthy run and needs none of its repairs.
    Schedule.objects.all().delete()
    result["anatomy"] = anatomy()
    idle = idle_commits_per_cluster(var)
    result["idle_commits_per_cluster"] = idle
    result["setup_s"] = round(time.monotonic() - began, 1)
    workloads = (("noop", noop_stage(noop)), ("assets.index", assets_stage(max_files)))
    for n in clusters:
        for workload, stage in workloads:
            if args.quick and workload != "noop":
                result["points"].append(
                    {"workload": workload, "clusters": n, "skipped": QUICK_SKIP}
                )
                continue
            try:
                point = measure(workload, stage, n, var=var, tree=tree, idle_per_cluster=idle)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                point = {"workload": workload, "clusters": n, "error": error}
            result["points"].append(point)
    result["curve"] = summarize(result["points"])
    finish(result)
    if not any("error" in p for p in result["points"]):
        # Kept when a point failed: the clusters' logs are there.
        shutil.rmtree(var, ignore_errors=True)


def finish(result: dict[str, Any]) -> None:
    result["verdict"] = judge(result)
    # The lines `make bench` prints (bench/run.py takes them as they are).
    result["table"] = table_lines(result)
    sys.stderr.write("\n".join(result["table"]) + "\n")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
