"""Executors against standard tools on the same generated files, through the whole engine
(plan → apply on a 2-worker cluster):

- deploy.pack (by_filesize) against `tar -czf`;
- assets.index (by_filesize) against `sha256sum` over the same files;
- docs search p95 over 10,000 indexed pages against `grep -ril` for the same word.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = [
    "deploy",
    "partition",
    "ledger",
    "archive",
    "module",
    "registry",
    "cache",
    "asset",
    "bucket",
    "route",
    "index",
    "migration",
    "batch",
    "backfill",
    "customer",
    "order",
    "invoice",
    "shipment",
    "warehouse",
    "catalogue",
    "payment",
    "refund",
    "session",
    "token",
    "worker",
    "cluster",
    "lease",
    "fence",
    "heartbeat",
    "receipt",
    "merkle",
    "digest",
    "approval",
    "review",
    "operator",
    "approver",
    "contract",
    "blueprint",
    "schema",
]


def make_sources(root: Path, n_files: int, size: int, rng: random.Random) -> int:
    """Text-like files (compressible as source code is), spread over directories."""
    total = 0
    for i in range(n_files):
        d = root / f"pkg{i % 20:02d}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        words = [rng.choice(WORDS) for _ in range(size // 7)]
        lines = [" ".join(words[j : j + 12]) for j in range(0, len(words), 12)]
        data = ("\n".join(lines) + "\n").encode()
        (d / f"module_{i:05d}.py").write_bytes(data)
        total += len(data)
    return total


def make_assets(root: Path, n_files: int, size: int, rng: random.Random) -> int:
    total = 0
    kinds = [("images", ".png"), ("styles", ".css"), ("scripts", ".js"), ("media", ".wav")]
    for i in range(n_files):
        bucket, ext = kinds[i % len(kinds)]
        d = root / bucket
        d.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        (d / f"asset_{i:05d}{ext}").write_bytes(data)
        total += len(data)
    return total


def make_docs(root: Path, n_pages: int, rng: random.Random) -> None:
    """Pages of prose-like text: a Zipf-distributed vocabulary of 3,000 words, as natural text
    has (a few words everywhere, most words rare), plus a few topic words per page."""
    syllables = ["ka", "lo", "mi", "ren", "tas", "vo", "qui", "bel", "dor", "fen", "gu", "hal"]
    made = ("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(4000))
    vocab = list(dict.fromkeys(made))[:3000]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    for i in range(n_pages):
        d = root / f"section{i % 25:02d}"
        d.mkdir(parents=True, exist_ok=True)
        words = rng.choices(vocab, weights=weights, k=150) + rng.sample(WORDS, 3)
        rng.shuffle(words)
        marker = " zephyrine" if i % 97 == 0 else ""
        (d / f"page_{i:05d}.md").write_text(
            f"# Page {i} about {rng.choice(WORDS)}\n\n## Details\n\n{' '.join(words)}{marker}\n"
        )


def run_plan(user: Any, stage: dict[str, Any]) -> tuple[float, Any]:
    from bench.harness import wait
    from runs_app import services
    from runs_app.models import Run

    plan = services.plan_create(actor=user, document={"name": stage["id"], "stages": [stage]})
    start = time.perf_counter()
    run = services.run_apply(plan=plan, actor=user, force_rerun=True)
    wait(lambda: Run.objects.filter(pk=run.pk, finished_at__isnull=False).exists(), poll=0.01)
    elapsed = time.perf_counter() - start
    run.refresh_from_db()
    if run.state != "succeeded":
        raise RuntimeError(f"{stage['id']} ended {run.state}")
    return elapsed, run


def shell_time(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="hxo-bench-ws-"))
    src, assets, docs = work / "src", work / "assets", work / "docs"
    n_src, n_assets, n_pages = (600, 400, 2000) if args.quick else (2400, 1600, 10000)
    src_bytes = make_sources(src, n_src, 16_000, rng)
    asset_bytes = make_assets(assets, n_assets, 32_000, rng)
    make_docs(docs, n_pages, rng)
    os.environ["HXO_WORKSPACES"] = json.dumps({"bench": str(work)})

    from bench.harness import bench_user, cluster, setup_django

    setup_django()
    user = bench_user()
    result: dict[str, Any] = {}

    with cluster(2):
        # deploy.pack against tar -czf (gzip's default level 6, one core).
        pack_s, _ = run_plan(
            user,
            {
                "id": "pack",
                "kind": "deploy.pack",
                "partitioner": "by_filesize",
                "executor": "pack_backend",
                "params": {"workspace": "bench", "root": "src", "chunk_size_mb": 4},
            },
        )
        tar_s = shell_time(["tar", "-czf", str(work / "all.tar.gz"), "src"], work)
        result["pack"] = {
            "files": n_src,
            "bytes": src_bytes,
            "hxo_s": pack_s,
            "tar_czf_s": tar_s,
            "ratio": tar_s / pack_s,
            "summary": f"HXO {pack_s:.2f}s vs tar -czf {tar_s:.2f}s ({tar_s / pack_s:.2f}x)",
        }

        # assets.index against sha256sum over the same files.
        index_s, _ = run_plan(
            user,
            {
                "id": "assets",
                "kind": "assets.index",
                "partitioner": "by_filesize",
                "executor": "index_assets",
                "params": {"workspace": "bench", "root": "assets", "chunk_size_mb": 8},
            },
        )
        files = sorted(str(p.relative_to(work)) for p in assets.rglob("*") if p.is_file())
        sha_s = shell_time(["sha256sum", *files], work)
        result["assets"] = {
            "files": n_assets,
            "bytes": asset_bytes,
            "hxo_s": index_s,
            "sha256sum_s": sha_s,
            "ratio": sha_s / index_s,
            "summary": f"HXO {index_s:.2f}s vs sha256sum {sha_s:.2f}s ({sha_s / index_s:.2f}x)",
        }

        # docs.index, then search latency against grep -ril.
        docs_s, _ = run_plan(
            user,
            {
                "id": "docs",
                "kind": "docs.index",
                "partitioner": "by_route_map",
                "executor": "docs_index",
                "params": {"workspace": "bench", "root": "docs"},
            },
        )
    from runs_app.search import search_docs

    queries = ["zephyrine", "ledger archive", "merkle", "heartbeat receipt", "warehouse"]
    times = []
    for _ in range(20):
        for q in queries:
            t = time.perf_counter()
            hits = search_docs(q, 20)
            times.append((time.perf_counter() - t) * 1000)
            assert hits, q
    grep_s = shell_time(["grep", "-ril", "zephyrine", "docs"], work)
    p95 = sorted(times)[int(0.95 * (len(times) - 1))]
    result["docs_search"] = {
        "pages": n_pages,
        "index_s": docs_s,
        "hxo_p50_ms": statistics.median(times),
        "hxo_p95_ms": p95,
        "grep_ril_ms": grep_s * 1000,
        "summary": f"{n_pages} pages indexed in {docs_s:.2f}s; search p95 {p95:.1f} ms "
        f"vs grep -ril {grep_s * 1000:.0f} ms",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
