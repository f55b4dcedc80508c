"""`make bench`: HXO against raw django-q2, the database's floor, standard tools and its own
scale, as ratios measured in one run. Writes bench/results/latest.json and prints a table.

Each section runs in its own process (settings such as DATABASE_URL and HXO_BROKER are read at
start-up), on a private var dir, and prints one JSON object. `--quick` (QUICK=1) shrinks every
workload so the whole bench finishes within two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PG_URL = os.environ.get("HXO_BENCH_PG", "postgres://postgres@127.0.0.1:5432/hxo_bench")
REDIS_URL = os.environ.get("HXO_BENCH_REDIS", "redis://127.0.0.1:6379/15")


def section(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    full_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    proc = subprocess.run(
        [PY, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=3600,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        return {"error": f"{script} exited {proc.returncode}", "stderr": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["section_s"] = round(time.monotonic() - started, 2)
    return result


def scaled_services_up() -> bool:
    """PostgreSQL and Redis reachable, and a bench database we may create."""
    try:
        import psycopg
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        base = PG_URL.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(base, autocommit=True, connect_timeout=2) as conn:
            name = PG_URL.rsplit("/", 1)[1]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        redis.Redis.from_url(REDIS_URL).flushdb()
        return True
    except Exception as exc:
        sys.stderr.write(f"scaled mode not measured: {exc}\n")
        return False


def machine() -> dict[str, Any]:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def goal(value: float | None, op: str, target: float) -> dict[str, Any]:
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    return {"value": value, "target": f"{op} {target}", "met": met}


def goals(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    emb = results.get("orchestration", {})
    if "hxo" in emb:
        out["hxo_vs_raw_django_q2"] = goal(
            emb["hxo"]["per_second"] / emb["raw_django_q2"]["per_second"], ">=", 5
        )
        out["hxo_share_of_floor"] = goal(
            emb["hxo"]["per_second"] / emb["floor"]["per_second"], ">=", 0.7
        )
        big = [p for p in emb.get("planning", []) if p["partitions"] >= 100_000]
        if big:
            out["planning_100k_vs_bulk_create"] = goal(big[-1]["ratio"], "<=", 1.5)
    pages = results.get("pages", {})
    for name, row in pages.get("views", {}).items():
        out[f"{name}_same_queries"] = goal(1.0 if row["same_queries"] else 0.0, ">=", 1)
        out[f"{name}_time_ratio"] = goal(row["time_ratio"], "<=", 1.5)
    val = results.get("validation", {})
    if "plans" in val:
        out["live_validation_p95_ms_50_stages"] = goal(val["plans"]["50"]["p95_ms"], "<=", 20)
    ex = results.get("executors", {})
    if "pack" in ex:
        out["pack_vs_tar"] = goal(ex["pack"]["ratio"], ">=", 1.5)
    if "assets" in ex:
        out["assets_index_vs_sha256sum"] = goal(ex["assets"]["ratio"], ">=", 0.8)
    if "docs_search" in ex:
        out["docs_search_p95_ms"] = goal(ex["docs_search"]["hxo_p95_ms"], "<=", 20)
    return out


def table(results: dict[str, Any]) -> str:
    lines = []
    emb = results.get("orchestration", {})
    for label, res in (("embedded", emb), ("scaled", results.get("orchestration_scaled", {}))):
        if "hxo" not in res:
            continue
        lines.append(
            f"orchestration ({label}: {res['database']} + {res['broker']}, "
            f"{res['workers']} workers, {res['hxo']['partitions']} no-op partitions)"
        )
        lines.append(f"  HXO                {res['hxo']['per_second']:10.0f} partitions/s")
        lines.append(f"  raw django-q2      {res['raw_django_q2']['per_second']:10.0f} tasks/s")
        lines.append(f"  database floor     {res['floor']['per_second']:10.0f} claim+complete/s")
        vs_q2 = res["hxo"]["per_second"] / res["raw_django_q2"]["per_second"]
        vs_floor = res["hxo"]["per_second"] / res["floor"]["per_second"]
        lines.append(f"  HXO / django-q2 {vs_q2:8.1f}x   HXO / floor {vs_floor:6.0%}")
        for p in res.get("planning", []):
            lines.append(
                f"  planning {p['partitions']:>7}: HXO {p['hxo_s']:.2f}s, bulk_create "
                f"{p['bulk_create_s']:.2f}s ({p['ratio']:.2f}x)"
            )
    pages = results.get("pages", {})
    for name, row in pages.get("views", {}).items():
        sizes = ", ".join(
            f"{n}: {r['ms']:.1f} ms/{r['queries']}q" for n, r in row["by_size"].items()
        )
        lines.append(f"page {name:<16} {sizes}  (x{row['time_ratio']:.2f})")
    val = results.get("validation", {})
    for n, row in val.get("plans", {}).items():
        lines.append(
            f"live validation {n:>2} stages: p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms"
        )
    ex = results.get("executors", {})
    for name, row in ex.items():
        if isinstance(row, dict) and "summary" in row:
            lines.append(f"{name:<12} {row['summary']}")
    lines.append("goals:")
    for name, g in results.get("goals", {}).items():
        mark = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        value = g["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<40} {shown:>10} (goal {g['target']}): {mark}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("QUICK") == "1"
    n = "500" if quick else "2000"
    planning = "10000" if quick else "10000,100000"
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "machine": machine(),
    }
    embedded_env = {"DATABASE_URL": "", "HXO_BROKER": "orm"}
    results["orchestration"] = section(
        "orchestration.py", n, "--planning", planning, env=embedded_env
    )
    if scaled_services_up():
        results["orchestration_scaled"] = section(
            "orchestration.py",
            n,
            env={"DATABASE_URL": PG_URL, "HXO_BROKER": "redis", "REDIS_URL": REDIS_URL},
        )
    for name, script in (("pages", "pages.py"), ("validation", "validation.py")):
        if (ROOT / "bench" / script).exists():
            results[name] = section(script, *(["--quick"] if quick else []), env=embedded_env)
    if (ROOT / "bench" / "executors.py").exists():
        results["executors"] = section(
            "executors.py", *(["--quick"] if quick else []), env=embedded_env
        )
    results["goals"] = goals(results)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    print(f"\nwritten: {out / 'latest.json'}")


if __name__ == "__main__":
    main()
