"""Run start and memory: what a user waits for when starting a run, and what the processes
hold while a big one is drained and watched.

1. Run start: `POST /api/v1/plans/{id}/dry-run/` and `POST /api/v1/plans/{id}/apply/` through
   the real API stack (Django's test client: URL routing, middleware, DRF, session auth,
   validation, the run stored, the partition task enqueued) for plans of 10, 10,000 and
   100,000 partitions, SAMPLES of each per size, while a 2-worker django-q2 cluster runs: the
   POST answers 202 and a worker partitions later. Each run is aborted (untimed) once its
   POST has answered, so the queue does not grow by 100,000 partitions per sample; a worker
   that had begun resolving the manifest goes on competing for the CPU, as in production.
2. Worker memory: one apply of M partitions (100,000; quick 20,000) partitioned and drained
   by a fresh cluster; VmHWM (peak resident set, /proc/<pid>/status) of every process of the
   cluster, its peaks reset first (`echo 5 > /proc/<pid>/clear_refs`) so the figure covers
   this run. The goal reads the largest, a worker: the one that partitioned the run holds the
   manifest (django-q2's sentinel, pusher and monitor stay small). Worker processes recycled
   mid-run are sampled every 0.2 s while they live.
3. Web memory: this process, peak reset after the cluster stopped, then serving the run page,
   its progress partial and `GET /api/v1/runs/{id}/` of that run ROUNDS times each; DEBUG is
   off as in production (DEBUG keeps every query's SQL).

Run as `python bench/serving.py [--quick]`; prints one JSON object. The database and broker
come from the environment (DATABASE_URL, HXO_BROKER) like the app.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_user, cluster, setup_django

SIZES = (10, 10_000, 100_000)
SAMPLES = 20  # POSTs of each kind per size: a p95 of 40 requests is the 38th slowest
ROUNDS = 10


def status_kb(pid: int | str, field: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS) of /proc/<pid>/status; None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak(pid: int | str) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, clear_refs value 5)."""
    with contextlib.suppress(OSError):  # the process has ended: nothing to reset
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def descendants(root: int) -> list[int]:
    """Every live process below `root` (from each /proc/<pid>/stat's parent pid)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parent.items() if p == pid]
        out += kids
        frontier += kids
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def plan_for(user: Any, n: int) -> Any:
    from bench.kinds import BENCH_KIND
    from runs_app import services

    return services.plan_create(
        actor=user,
        document={
            "name": f"serving {n}",
            "stages": [
                {
                    "id": "noop",
                    "kind": BENCH_KIND,
                    "partitioner": "bench_count",
                    "executor": "bench_noop",
                    "params": {"items": n},
                }
            ],
        },
    )


def post(client: Any, url: str) -> tuple[float, int]:
    """(milliseconds, run id) of one POST that must answer 202."""
    t = time.perf_counter()
    response = client.post(url, {}, content_type="application/json")
    ms = (time.perf_counter() - t) * 1000
    assert response.status_code == 202, (url, response.status_code, response.content[:300])
    return ms, response.json()["id"]


def run_start(client: Any, user: Any, sizes: tuple[int, ...], samples: int) -> dict[str, Any]:
    from runs_app.models import Run

    out: dict[str, Any] = {}
    for n in sizes:
        plan = plan_for(user, n)
        times: dict[str, list[float]] = {"dry_run": [], "apply": []}
        for _ in range(samples):
            for mode, path in (("dry_run", "dry-run"), ("apply", "apply")):
                ms, run_id = post(client, f"/api/v1/plans/{plan.pk}/{path}/")
                times[mode].append(ms)
                # Untimed: stop the run so the next sample does not queue behind its work.
                if Run.objects.filter(pk=run_id, finished_at__isnull=True).exists():
                    r = client.post(
                        f"/api/v1/runs/{run_id}/abort/", {}, content_type="application/json"
                    )
                    assert r.status_code in (200, 202, 409), r.status_code
        every = times["dry_run"] + times["apply"]
        out[str(n)] = {
            "samples": len(every),
            "p50_ms": statistics.median(every),
            "p95_ms": p95(every),
            "dry_run_p95_ms": p95(times["dry_run"]),
            "apply_p95_ms": p95(times["apply"]),
            "max_ms": max(every),
        }
    return out


def wait_for_idle(timeout: float = 300) -> None:
    """Until no run of this bench is partitioning or running (aborted ones finish cancelling)."""
    from runs_app.models import Run

    deadline = time.monotonic() + timeout
    while Run.objects.filter(finished_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("runs still active")
        time.sleep(0.1)


def worker_memory(client: Any, user: Any, n: int) -> tuple[dict[str, Any], int]:
    from runs_app.models import Partition, Run

    plan = plan_for(user, n)
    procs = descendants(os.getpid())
    for pid in procs:
        reset_peak(pid)
    peaks: dict[int, int] = {}
    rss_partitioning = 0

    def sample() -> None:
        for pid in descendants(os.getpid()):
            hwm = status_kb(pid, "VmHWM")
            if hwm is not None:
                peaks[pid] = max(peaks.get(pid, 0), hwm)

    start = time.perf_counter()
    _ms, run_id = post(client, f"/api/v1/plans/{plan.pk}/apply/")
    partitioned_at = None
    deadline = time.monotonic() + 900
    while True:
        sample()
        state = Run.objects.filter(pk=run_id).values_list("state", "finished_at").first()
        if partitioned_at is None and state[0] != "partitioning":
            partitioned_at = time.perf_counter()
            rss_partitioning = max(peaks.values(), default=0)
        if state[1] is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the memory run did not finish")
        time.sleep(0.2)
    end = time.perf_counter()
    sample()
    run = Run.objects.get(pk=run_id)
    done = Partition.objects.filter(run=run, state="succeeded").count()
    assert run.state == "succeeded" and done == n, (run.state, done, n)
    largest = max(peaks.values())
    return {
        "partitions": n,
        "partitioning_s": round((partitioned_at or end) - start, 2),
        "draining_s": round(end - (partitioned_at or end), 2),
        "processes": len(peaks),
        "peak_rss_mb_by_process": sorted(round(kb / 1024, 1) for kb in peaks.values()),
        "peak_rss_mb": round(largest / 1024, 1),
        "peak_rss_mb_when_partitioned": round(rss_partitioning / 1024, 1),
    }, run_id


def web_memory(client: Any, run_id: int, rounds: int) -> dict[str, Any]:
    me = os.getpid()
    before = status_kb(me, "VmRSS") or 0
    reset_peak(me)
    pages = {
        "run_page": (f"/runs/{run_id}/", {}),
        "progress_partial": (f"/runs/{run_id}/progress/", {"HTTP_HX_REQUEST": "true"}),
        "run_api": (f"/api/v1/runs/{run_id}/", {}),
        "partitions_api": (f"/api/v1/runs/{run_id}/partitions/", {}),
    }
    for url, headers in pages.values():
        for _ in range(rounds):
            response = client.get(url, **headers)
            # 286: htmx's "stop polling", what the progress partial answers for a finished run.
            assert response.status_code in (200, 286), (url, response.status_code)
    return {
        "pages": list(pages),
        "rounds": rounds,
        "rss_mb_before": round(before / 1024, 1),
        "peak_rss_mb": round((status_kb(me, "VmHWM") or 0) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-partitions", type=int, default=0)
    args = parser.parse_args()
    setup_django()  # DEBUG off, as in production
    from django.test import Client

    user = bench_user()
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    mem_n = args.memory_partitions or (20_000 if args.quick else 100_000)
    result: dict[str, Any] = {"workers": 2}
    with cluster(2):
        result["run_start"] = run_start(client, user, SIZES, SAMPLES)
        wait_for_idle()
    # A fresh cluster: a worker that resolved a 100,000-partition manifest above keeps that
    # heap (CPython returns little to the system), which would be counted against this run.
    with cluster(2):
        result["worker_memory"], run_id = worker_memory(client, user, mem_n)
    result["web_memory"] = {"partitions": mem_n, **web_memory(client, run_id, ROUNDS)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
