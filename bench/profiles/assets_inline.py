"""assets.index inline on a real tree, phase by phase, for bench/profiles/assets.md.

Runs the bench's plan (by_filesize, chunk_size_mb=8, apply with force_rerun) in this process:
`run_apply`, `run_partition` and `tasks.drain` called directly, no broker. Prints the smallest
wall and CPU seconds (`time.process_time`) of each phase over N runs (env `N`, default 5)
after a warm-up, dumps one more run's cProfile to `$PROFILE_DIR/<tree>.prof` (default
/tmp), and times `sha256sum` of the same files (CPU from RUSAGE_CHILDREN).

    .venv/bin/python bench/profiles/assets_inline.py fontawesome|django
"""

from __future__ import annotations

import cProfile
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.realmaterial.material import CATALOGUE, fetch, find_files, unpack  # noqa: E402


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "fontawesome"
    work = Path(tempfile.mkdtemp(prefix="hxo-assets-inline-"))
    item = CATALOGUE[name]
    archive, _ = fetch(item)
    tree = unpack(item, archive, work / name)
    os.environ["HXO_WORKSPACES"] = json.dumps({name: str(tree)})
    from bench.harness import bench_user, setup_django

    setup_django(str(work / "var"))
    user = bench_user()
    from runs_app import services, tasks
    from runs_app.models import AssetIndexEntry

    def once() -> dict[str, float]:
        stage = {
            "id": "a",
            "kind": "assets.index",
            "partitioner": "by_filesize",
            "executor": "index_assets",
            "params": {"workspace": name, "root": ".", "chunk_size_mb": 8},
        }
        plan = services.plan_create(
            actor=user, document={"name": f"p{time.time_ns()}", "stages": [stage]}
        )
        t0, c0 = time.perf_counter(), time.process_time()
        run = services.run_apply(plan=plan, actor=user, force_rerun=True)
        t1 = time.perf_counter()
        services.run_partition(run_id=run.pk)
        t2, c2 = time.perf_counter(), time.process_time()
        tasks.drain(run.pk)
        t3, c3 = time.perf_counter(), time.process_time()
        run.refresh_from_db()
        assert run.state == "succeeded", run.state
        return {
            "apply": t1 - t0,
            "partition": t2 - t1,
            "drain": t3 - t2,
            "total": t3 - t0,
            "cpu_part": c2 - c0,
            "cpu_drain": c3 - c2,
        }

    try:
        once()
        runs = [once() for _ in range(int(os.environ.get("N", "5")))]
        print("min", {k: round(min(r[k] for r in runs), 3) for k in runs[0]})
        prof = cProfile.Profile()
        prof.enable()
        profiled: dict[str, Any] = once()
        prof.disable()
        prof.dump_stats(Path(os.environ.get("PROFILE_DIR", "/tmp")) / f"{name}.prof")
        files = sorted(find_files(tree))
        assert AssetIndexEntry.objects.filter(workspace=name).count() == len(files)
        print("profiled", {k: round(v, 3) for k, v in profiled.items()})
        best = []
        for _ in range(5):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(["sha256sum", "--", *files], cwd=tree, stdout=subprocess.DEVNULL)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            best.append((time.perf_counter() - t, cpu))
        print(f"sha256sum wall {min(b[0] for b in best):.3f} cpu {min(b[1] for b in best):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
