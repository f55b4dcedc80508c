"""assets.index through a 2-worker django-q2 cluster, CPU by process, for bench/profiles/engine.md.

Runs `bench/real.py --only assets`'s plan (by_filesize, chunk_size_mb=8, apply with
force_rerun) on a real tree through the same cluster (`bench.harness.cluster`, ORM broker on
the bench's SQLite), `RUNS` times (env, default 4; the first run is the cold one real.py
measures), and reports for each run the CPU seconds of every process of the tree from /proc,
grouped by role (`main`: run_apply and the bench's wait loop; `sentinel`; `pusher`;
`monitor`; `worker`: roles written by the bench-only plugin `bench.cluster_probe`), the
queue's tasks for the run (django-q2 `Task` rows: drainers, partition task, their run time),
and an idle cluster's CPU over IDLE_S seconds (env, default 3). With `PROFILE=1` every
cluster child also runs under cProfile and the top functions per role are printed at the end
(cProfile inflates CPU: take shares from it, figures from a run without it);
`KEEP_PROFILES=<dir>` keeps the .prof files.

    .venv/bin/python bench/profiles/engine_cluster.py fontawesome|django

`CONN_MAX_AGE=<s>` overrides HXO_CONN_MAX_AGE for the cluster (`CONN_MAX_AGE=0`: the pusher
reconnects at every poll, as before bench/profiles/engine.md's change).
"""

from __future__ import annotations

import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.realmaterial.material import CATALOGUE, fetch, unpack  # noqa: E402


def tree_ticks() -> dict[int, int]:
    """utime + stime ticks of this process and every live descendant, by pid."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    mine = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, ppid in parents.items() if ppid in mine} - mine
        grew = bool(found)
        mine |= found
    return {pid: ticks[pid] for pid in mine if pid in ticks}


def roles(probe: Path) -> dict[int, str]:
    found = {os.getpid(): "main"}
    for f in probe.glob("*.role"):
        found[int(f.stem)] = f.read_text()
    return found


def by_role(before: dict[int, int], after: dict[int, int], probe: Path) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    named = roles(probe)
    out: dict[str, float] = {}
    for pid, t in after.items():
        role = named.get(pid, "sentinel")
        out[role] = out.get(role, 0.0) + (t - before.get(pid, 0)) / tick
    out["total"] = sum(out.values())
    return {k: round(v, 3) for k, v in sorted(out.items())}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "fontawesome"
    runs = int(os.environ.get("RUNS", "4"))
    idle_s = float(os.environ.get("IDLE_S", "3"))
    work = Path(tempfile.mkdtemp(prefix="hxo-engine-cluster-"))
    probe = work / "probe"
    probe.mkdir()
    item = CATALOGUE[name]
    archive, _ = fetch(item)
    tree = unpack(item, archive, work / name)
    os.environ["HXO_WORKSPACES"] = json.dumps({name: str(tree)})
    os.environ["HXO_CLUSTER_PROBE_DIR"] = str(probe)
    os.environ["HXO_CLUSTER_PROBE_PROFILE"] = os.environ.get("PROFILE", "0")
    os.environ["HXO_PLUGINS"] = "bench.cluster_probe"
    from bench.harness import bench_user, cluster, setup_django

    setup_django(str(work / "var"))
    user = bench_user()
    from django.db import connections
    from django_q.models import Task

    if os.environ.get("CONN_MAX_AGE"):
        # Set before the cluster forks, so its processes inherit it: the pusher's poll
        # (django-q2 calls close_old_connections before each) keeps or drops its connection.
        connections["default"].settings_dict["CONN_MAX_AGE"] = int(os.environ["CONN_MAX_AGE"])

    from bench.executors import run_plan
    from runs_app.models import AssetIndexEntry, Partition

    stage = {
        "id": f"assets-{name}",
        "kind": "assets.index",
        "partitioner": "by_filesize",
        "executor": "index_assets",
        "params": {"workspace": name, "root": ".", "chunk_size_mb": 8},
    }
    report: dict[str, Any] = {"tree": name, "load_before": os.getloadavg()[0], "runs": []}
    try:
        with cluster(2):
            time.sleep(1.0)  # the children start and write their roles
            before = tree_ticks()
            time.sleep(idle_s)
            report["idle_cpu_s_per_s"] = {
                k: round(v / idle_s, 4) for k, v in by_role(before, tree_ticks(), probe).items()
            }
            for _ in range(runs):
                before = tree_ticks()
                wall, run = run_plan(user, stage)
                cpu = by_role(before, tree_ticks(), probe)
                tasks = list(
                    Task.objects.filter(group=f"run-{run.pk}").values_list(
                        "func", "started", "stopped"
                    )
                )
                kinds: dict[str, list[float]] = {}
                for func, started, stopped in tasks:
                    kinds.setdefault(func.rsplit(".", 1)[-1], []).append(
                        round((stopped - started).total_seconds(), 3)
                    )
                rows = AssetIndexEntry.objects.filter(workspace=name).count()
                report["runs"].append(
                    {
                        "wall_s": round(wall, 3),
                        "cpu_s": cpu,
                        "tasks_s": kinds,
                        "partitions": Partition.objects.filter(run=run).count(),
                        "index_rows": rows,
                    }
                )
    finally:
        report["load_after"] = os.getloadavg()[0]
        print(json.dumps(report, indent=1))
        if os.environ.get("PROFILE") == "1":
            for role in ("worker", "monitor", "pusher"):
                files = sorted(str(p) for p in probe.glob(f"{role}-*.prof"))
                if not files:
                    continue
                out = io.StringIO()
                stats = pstats.Stats(*files, stream=out)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(45)
                print(f"==== {role} ({len(files)} processes)\n{out.getvalue()}")
        if os.environ.get("KEEP_PROFILES"):
            shutil.copytree(probe, os.environ["KEEP_PROFILES"], dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
