"""Executors on real trees against the command-line tool a user would run instead, both timed in
this run on the same files, and the effects checked after each HXO run:

- deploy.pack (by_filesize, level 6, 2 workers) of the Django 5.2 sdist vs `tar -czf` (gzip's
  default level is 6) of the same tree; every file is in an archive;
- assets.index of Font Awesome free 6.5.2 and of the Django sdist vs `sha256sum` of exactly the
  files HXO indexed; every file of the tree has its row;
- deploy.prime prime_caches on `django/` vs `python -m compileall -q -j 2 --invalidation-mode
  checked-hash` on a fresh copy of it; every module has its bytecode file;
- deploy.prime warm_registry on `django/` vs `ast.parse` of every file in one process; every
  entry written exists afterwards, for the file's SHA-256;
- docs.index of Django's `docs/` (reST in .txt, a Sphinx tree) vs docutils parsing every page
  alone (no index writes); every page has its row.

The material is fetched at pinned versions and verified against pinned SHA-256s by
`tests.realmaterial.material` (cached in `$HXO_REAL_MATERIAL_CACHE`). HXO's time is from
`run_apply` (what the apply POST calls, partitioning included) to the run's `finished_at`.
Ratios are baseline seconds / HXO seconds: above 1 means HXO is faster.

Run as `python bench/real.py [--quick] [--only pack,assets,prime,registry,docs]`; prints one
JSON object. `--quick` indexes a third of Django's docs (the other trees are whole).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realmaterial.material import CATALOGUE, fetch, find_files, unpack  # noqa: E402

PACK_LEVEL = 6  # gzip's default, so `tar -czf` compresses at the same level
SECTIONS = ("pack", "assets", "prime", "registry", "docs")

# docutils on every page of a tree, one process, no writes: the floor docs.index is judged by.
DOCUTILS_BASELINE = """
import io, sys
from docutils.core import publish_doctree
overrides = {"report_level": 5, "halt_level": 5, "warning_stream": io.StringIO(),
             "file_insertion_enabled": False, "raw_enabled": False}
for path in sys.argv[1:]:
    publish_doctree(open(path, encoding="utf-8").read(), settings_overrides=overrides)
"""

# ast.parse of every file, one process: the floor warm_registry is judged by.
AST_BASELINE = """
import ast, sys
for path in sys.argv[1:]:
    ast.parse(open(path, "rb").read(), path)
"""


def material(work: Path) -> dict[str, Path]:
    """Fetch (or find cached) and unpack the Django sdist and Font Awesome into `work`."""
    trees = {}
    for name in ("django", "fontawesome"):
        item = CATALOGUE[name]
        archive, _fetched = fetch(item)
        trees[name] = unpack(item, archive, work / name)
    return trees


def shell_time(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the waited-for children of this process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_cpu_s() -> float | None:
    """CPU seconds (user + system) of this process and all its descendants so far: itself,
    the children it waited for, and the live ones (the django-q cluster's processes) read
    from /proc with their own waited-for children. None where there is no /proc. CPU time
    holds still when other work shares the machine; a wall-clock ratio does not."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since the listing
        # After the name: state, ppid, ..., utime (14th field), stime, cutime, cstime.
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(v) for v in fields[11:15]) / tick
    if not times:
        return None
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    own = resource.getrusage(resource.RUSAGE_SELF)
    live = sum(t for pid, t in times.items() if pid != me and descends(pid))
    return own.ru_utime + own.ru_stime + children_cpu_s() + live


def row(name: str, hxo_s: float, base_name: str, base_s: float, **extra: Any) -> dict[str, Any]:
    ratio = base_s / hxo_s
    return {
        "hxo_s": round(hxo_s, 3),
        "baseline": base_name,
        "baseline_s": round(base_s, 3),
        "ratio": round(ratio, 3),
        **extra,
        "summary": f"HXO {hxo_s:.2f}s vs {base_name} {base_s:.2f}s ({ratio:.2f}x)",
    }


def stage(sid: str, kind: str, partitioner: str, executor: str, **params: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": kind,
        "partitioner": partitioner,
        "executor": executor,
        "params": params,
    }


def outputs(run: Any) -> list[dict[str, Any]]:
    from runs_app.models import Partition

    return list(Partition.objects.filter(run=run).values_list("output", flat=True))


def bench_pack(user: Any, tree: Path, work: Path) -> dict[str, Any]:
    from bench.executors import run_plan
    from runs_app.kinds.pack import _artifacts

    cpu_before = tree_cpu_s()
    hxo_s, run = run_plan(
        user,
        stage(
            "pack",
            "deploy.pack",
            "by_filesize",
            "pack_backend",
            workspace="django",
            root=".",
            chunk_size_mb=4,
            compress_level=PACK_LEVEL,
        ),
    )
    cpu_after = tree_cpu_s()
    files = find_files(tree)
    outs = outputs(run)
    packed = sum(o["files_processed"] for o in outs)
    members = 0
    for o in outs:  # the archives hold the files, not just a count in the output
        with _artifacts().open(o["archive"], "rb") as f, tarfile.open(fileobj=f) as tar:
            members += sum(1 for m in tar if m.isfile())
    if not packed == members == len(files):
        raise RuntimeError(f"pack: {len(files)} files, {packed} reported, {members} in archives")
    tar_cpu = children_cpu_s()
    tar_s = shell_time(["tar", "-czf", str(work / "django.tar.gz"), "-C", str(tree), "."], work)
    tar_cpu = children_cpu_s() - tar_cpu
    # CPU seconds beside the wall-clock ratio: on a loaded machine the wall clock of either
    # side moves with the load, their CPU seconds hardly (HXO's include the bench's own
    # polling and the cluster's idle processes over the run).
    hxo_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return row(
        "pack",
        hxo_s,
        "tar -czf",
        tar_s,
        files=len(files),
        partitions=len(outs),
        level=PACK_LEVEL,
        hxo_cpu_s=None if hxo_cpu is None else round(hxo_cpu, 3),
        baseline_cpu_s=round(tar_cpu, 3),
    )


def bench_assets(user: Any, name: str, tree: Path) -> dict[str, Any]:
    from bench.executors import run_plan
    from runs_app.models import AssetIndexEntry

    cpu_before = tree_cpu_s()
    hxo_s, run = run_plan(
        user,
        stage(
            f"assets-{name}",
            "assets.index",
            "by_filesize",
            "index_assets",
            workspace=name,
            root=".",
            chunk_size_mb=8,
        ),
    )
    cpu_after = tree_cpu_s()
    hxo_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    indexed = list(AssetIndexEntry.objects.filter(workspace=name).values_list("path", "sha256"))
    files = find_files(tree)
    if {p for p, _ in indexed} != files:
        raise RuntimeError(f"assets {name}: {len(files)} files, {len(indexed)} indexed")
    paths = sorted(p for p, _ in indexed)
    sha_cpu = children_cpu_s()
    sha_s = shell_time(["sha256sum", "--", *paths], tree)
    sha_cpu = children_cpu_s() - sha_cpu
    sample = dict(indexed)
    for p in paths[:: max(1, len(paths) // 50)]:  # the digests are the files' digests
        if hashlib.sha256((tree / p).read_bytes()).hexdigest() != sample[p]:
            raise RuntimeError(f"assets {name}: wrong SHA-256 for {p}")
    # CPU seconds beside the wall clock: the whole process tree for HXO (web side and the
    # cluster's workers, its idle polling included), sha256sum's own for the baseline.
    return row(
        f"assets-{name}",
        hxo_s,
        "sha256sum",
        sha_s,
        files=len(paths),
        partitions=len(outputs(run)),
        hxo_cpu_s=None if hxo_cpu is None else round(hxo_cpu, 3),
        baseline_cpu_s=round(sha_cpu, 3),
        cpu_ratio=round(sha_cpu / hxo_cpu, 3) if hxo_cpu else None,
    )


def modules(tree: Path, package: str = "django") -> dict[str, str]:
    """Dotted module name → path relative to the workspace, for every .py under `package`."""
    found = {}
    for rel in find_files(tree / package):
        if rel.endswith(".py"):
            parts = [package, *PurePosixPath(rel).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = f"{package}/{rel}"
    return found


def bench_prime(user: Any, tree: Path, work: Path) -> dict[str, Any]:
    from bench.executors import run_plan
    from runs_app.kinds.prime import pyc_path

    hxo_s, run = run_plan(
        user,
        stage(
            "prime", "deploy.prime", "by_module", "prime_caches", workspace="django", root="django"
        ),
    )
    expected = modules(tree)
    missing = [rel for rel in expected.values() if not pyc_path("django", rel).is_file()]
    if missing:
        raise RuntimeError(f"prime_caches: {len(missing)} modules without bytecode: {missing[:3]}")
    copy = work / "compileall" / "django"
    shutil.copytree(tree / "django", copy)
    base_s = shell_time(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "2",
            "--invalidation-mode",
            "checked-hash",
            "django",
        ],
        copy.parent,
    )
    return row(
        "prime",
        hxo_s,
        "compileall -j 2 checked-hash",
        base_s,
        modules=len(expected),
        partitions=len(outputs(run)),
    )


def bench_registry(user: Any, tree: Path) -> dict[str, Any]:
    from bench.executors import run_plan
    from runs_app.kinds.prime import registry_get

    hxo_s, run = run_plan(
        user,
        stage(
            "registry",
            "deploy.prime",
            "by_module",
            "warm_registry",
            workspace="django",
            root="django",
        ),
    )
    expected = modules(tree)
    found = registry_get("django", list(expected))
    wrong = [
        m
        for m, rel in expected.items()
        if m not in found
        or found[m]["source_sha256"] != hashlib.sha256((tree / rel).read_bytes()).hexdigest()
    ]
    if wrong:
        raise RuntimeError(f"warm_registry: {len(wrong)} entries missing or stale: {wrong[:3]}")
    base_s = shell_time([sys.executable, "-c", AST_BASELINE, *expected.values()], tree)
    return row(
        "registry",
        hxo_s,
        "ast.parse, one process",
        base_s,
        modules=len(expected),
        entries=len(found),
        partitions=len(outputs(run)),
    )


def docs_tree(tree: Path, work: Path, quick: bool) -> tuple[str, Path]:
    """(workspace name, folder) of the Django docs to index: the whole Sphinx tree `docs/`, or
    in quick mode a copy without `ref/` and `releases/` (about 155 of its 620 pages, 40% of
    its bytes: still real pages, Sphinx roles and all, at a third of the time)."""
    if not quick:
        return "django-docs", tree / "docs"
    copy = work / "django-docs-quick"
    shutil.copytree(
        tree / "docs",
        copy,
        ignore=lambda d, names: ["ref", "releases"] if d == str(tree / "docs") else [],
    )
    return "django-docs", copy


def bench_docs(user: Any, workspace: str, tree: Path) -> dict[str, Any]:
    from bench.executors import run_plan
    from runs_app.models import DocPage

    hxo_s, run = run_plan(
        user,
        stage("docs", "docs.index", "by_route_map", "docs_index", workspace=workspace, root="."),
    )
    pages = {rel for rel in find_files(tree) if rel.endswith((".txt", ".rst", ".md"))}
    indexed = set(DocPage.objects.filter(workspace=workspace).values_list("path", flat=True))
    if indexed != pages:
        raise RuntimeError(f"docs.index: {len(pages)} pages, {len(indexed)} indexed")
    # The baseline parses the reST pages (all but the theme's one README.md) with docutils.
    rest = sorted(p for p in indexed if not p.endswith(".md"))
    base_s = shell_time([sys.executable, "-c", DOCUTILS_BASELINE, *rest], tree)
    return row(
        "docs",
        hxo_s,
        "docutils, every page alone",
        base_s,
        pages=len(pages),
        indexed=len(indexed),
        partitions=len(outputs(run)),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="index a third of Django's docs")
    args = parser.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="hxo-bench-real-"))
    trees = material(work / "trees")
    docs_ws, docs = docs_tree(trees["django"], work, args.quick)
    workspaces = {**{k: str(v) for k, v in trees.items()}, docs_ws: str(docs)}
    os.environ["HXO_WORKSPACES"] = json.dumps(workspaces)

    from bench.harness import bench_user, cluster, setup_django

    setup_django(str(work / "var"))  # removed with the trees at the end
    user = bench_user()
    result: dict[str, Any] = {
        "material": {
            name: {
                "spec": CATALOGUE[name].spec,
                "sha256": CATALOGUE[name].sha256,
                "files": len(find_files(tree)),
            }
            for name, tree in trees.items()
        },
        "load_before": os.getloadavg()[0],
    }
    try:
        with cluster(2):
            if "pack" in only:
                result["pack"] = bench_pack(user, trees["django"], work)
            if "assets" in only:
                result["assets_fontawesome"] = bench_assets(
                    user, "fontawesome", trees["fontawesome"]
                )
                result["assets_django"] = bench_assets(user, "django", trees["django"])
            if "prime" in only:
                result["prime_caches"] = bench_prime(user, trees["django"], work)
            if "registry" in only:
                result["warm_registry"] = bench_registry(user, trees["django"])
            if "docs" in only:
                result["docs_index"] = bench_docs(user, docs_ws, docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
