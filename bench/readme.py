"""Regenerate the README's Performance table from `bench/results/latest.json` (what `make bench`
wrote): real workloads first, then the generated ones, each with the goal's status and the
conditions it was measured under (quick or full run, how busy the machine was).

`python bench/readme.py` rewrites the lines between `<!-- bench:table -->` and
`<!-- /bench:table -->` in README.md; `--print` only prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:table -->", "<!-- /bench:table -->"
TIMES = "\u00d7"  # the multiplication sign the README uses for ratios

REAL_ROWS = (
    ("pack", "pack_django_vs_tar", "`deploy.pack` of the Django 5.2 sdist ({files:,} files), "
     "2 workers, level 6", "`tar -czf`"),
    ("assets_fontawesome", "assets_fontawesome_vs_sha256sum", "`assets.index` of Font Awesome "
     "free 6.5.2 ({files:,} files)", "`sha256sum`"),
    ("assets_django", "assets_django_vs_sha256sum", "`assets.index` of the Django sdist "
     "({files:,} files)", "`sha256sum`"),
    ("prime_caches", "prime_caches_django_vs_compileall", "`deploy.prime` `prime_caches` on "
     "`django/` ({modules} modules)", "`compileall -q -j 2 --invalidation-mode checked-hash`"),
    ("warm_registry", "warm_registry_django_vs_ast_parse", "`deploy.prime` `warm_registry` on "
     "`django/` ({entries} entries, all checked)", "`ast.parse` of every file, one process"),
    ("docs_index", "docs_index_django_vs_docutils", "`docs.index` of Django's docs ({pages} "
     "pages)", "docutils, every page alone"),
)  # fmt: skip


def truncated(ratio: float) -> str:
    """A ratio to two decimals, cut rather than rounded: a ratio shown at its goal's line
    (1.4996 as "1.50" under "≥ 1.5") would read as met when it is not."""
    return f"{math.floor(ratio * 100) / 100:.2f}"


def mark(g: dict[str, Any] | None) -> str:
    if g is None:
        return ""
    sign = {"met": "✅", "missed": "❌", "not_judged": "not judged"}[g["status"]]
    if g["status"] == "missed" and "profile" in g:
        # A miss links the profile of where its time goes (bench/run.py PROFILES).
        sign = f"[{sign}]({g['profile']})"
    return f"{g['target'].replace('>=', '≥').replace('<=', '≤')} {sign}"


def load(section: dict[str, Any]) -> str:
    share = section.get("others_cpu_share")
    return "" if share is None else f"others {share:.0%} CPU"


def table(res: dict[str, Any]) -> str:
    """The Markdown table (with a line of conditions above it) for one results file."""
    g = res.get("goals", {})
    real = res.get("real", {})
    lines = [
        f"{'Quick' if res.get('quick') else 'Full'} run of {res.get('when', '?')} on "
        f"{res['machine']['cpus']} cores ({res['machine']['cpu']}); "
        '"others" is the share of the machine\'s CPU other processes used during that '
        "section (a timed goal is judged only at ≤ 25%).",
        "",
        "| what | HXO | baseline | ratio | goal | load |",
        "|---|---|---|---|---|---|",
    ]
    for key, goal_name, what, base in REAL_ROWS:
        row = real.get(key)
        if not row:
            continue
        lines.append(
            f"| {what.format(**row)} | {row['hxo_s']:.2f} s | {base}: {row['baseline_s']:.2f} s "
            f"| {truncated(row['ratio'])}{TIMES} | {mark(g.get(goal_name))} | {load(real)} |"
        )
    for label, key in (("SQLite + ORM broker", "orchestration"),
                       ("PostgreSQL + Redis", "orchestration_scaled")):  # fmt: skip
        o = res.get(key, {})
        if "hxo" not in o:
            continue
        n = o["hxo"]["partitions"]
        hxo, q2, floor = o["hxo"]["per_second"], o["raw_django_q2"], o["floor"]["per_second"]
        name = "hxo_vs_raw_django_q2" + ("_scaled" if key.endswith("scaled") else "")
        lines.append(
            f"| {n:,} no-op partitions, {label}, 2 workers | {hxo:,.0f}/s | raw django-q2 "
            f"({q2['tasks']:,} tasks): {q2['per_second']:,.0f}/s | "
            f"{hxo / q2['per_second']:.1f}{TIMES} | {mark(g.get(name))} | {load(o)} |"
        )
        share_goal = g.get("hxo_share_of_floor") if key == "orchestration" else None
        executing = o["hxo"].get("executing_per_second", hxo)
        lines.append(
            f"| same, claiming and completing once partitioned | {executing:,.0f}/s | "
            f"database floor: {floor:,.0f}/s | {executing / floor:.0%} | {mark(share_goal)} | |"
        )
        for p in o.get("planning", []):
            lines.append(
                f"| planning {p['partitions']:,} partitions | {p['hxo_s']:.2f} s | raw "
                f"`bulk_create`: {p['bulk_create_s']:.2f} s | {p['ratio']:.2f}{TIMES} | "
                f"{mark(g.get('planning_100k_vs_bulk_create')) if p is o['planning'][-1] else ''}"
                f" | |"
            )
    celery, scaled = res.get("celery", {}), res.get("orchestration_scaled", {})
    if "per_second" in celery and "hxo" in scaled:
        hxo = scaled["hxo"]["per_second"]
        lines.append(
            f"| same, against Celery {celery['celery']} (one `group`, 2 prefork workers) | | "
            f"{celery['tasks']:,} tasks: {celery['per_second']:,.0f}/s | "
            f"{hxo / celery['per_second']:.1f}{TIMES} | {mark(g.get('hxo_vs_celery_scaled'))} | "
            f"{load(celery)} |"
        )
    serving = res.get("serving", {})
    starts = serving.get("run_start", {})
    if starts:
        sizes = " / ".join(f"{int(n):,}" for n in starts)
        ms = " / ".join(f"{r['p95_ms']:.0f}" for r in starts.values())
        lines.append(
            f"| run start: `POST` dry-run and apply at {sizes} partitions | p95 {ms} ms | | | "
            f"{mark(g.get('run_start_p95_ms'))} | {load(serving)} |"
        )
    for key, goal_name, label in (
        ("worker_memory", "worker_peak_rss_mb_100k", "a worker partitioning and draining"),
        ("web_memory", "web_peak_rss_mb_100k", "the web process serving the run page of"),
    ):
        row = serving.get(key)
        if row:
            lines.append(
                f"| peak RSS of {label} {row['partitions']:,} partitions | "
                f"{row['peak_rss_mb']:.0f} MB | | | {mark(g.get(goal_name))} | |"
            )
    pages = res.get("pages", {})
    for name, row in pages.get("views", {}).items():
        sizes = " / ".join(f"{int(n):,}" for n in row["by_size"])
        ms = " / ".join(f"{r['ms']:.1f}" for r in row["by_size"].values())
        lines.append(
            f"| `{name}` at {sizes} partitions | {ms} ms | | {row['time_ratio']:.2f}{TIMES} | "
            f"{mark(g.get(f'{name}_time_ratio'))} | {load(pages)} |"
        )
    val = res.get("validation", {}).get("plans", {})
    if "50" in val:
        lines.append(
            f"| live validation of a 50-stage plan | p95 {val['50']['p95_ms']:.1f} ms | | | "
            f"{mark(g.get('live_validation_p95_ms_50_stages'))} | {load(res['validation'])} |"
        )
    ex = res.get("executors", {})
    if "docs_search" in ex:
        d = ex["docs_search"]
        lines.append(
            f"| docs search over {d['pages']:,} generated pages | p95 {d['hxo_p95_ms']:.1f} ms | "
            f"`grep -ril`: {d['grep_ril_ms']:.0f} ms | | {mark(g.get('docs_search_p95_ms'))} | "
            f"{load(ex)} |"
        )
    skipped = [n for n, x in g.items() if x["status"] == "not_judged" and x["value"] is None]
    if skipped:
        lines += ["", "Not measured by this run: " + ", ".join(f"`{n}`" for n in skipped) + "."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--print", action="store_true", help="print, do not edit README.md")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    text = table(json.loads(Path(args.results).read_text()))
    if args.print:
        print(text)
        return 0
    readme = ROOT / "README.md"
    body = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(body):
        sys.stderr.write(f"README.md has no {START} … {END} block\n")
        return 1
    readme.write_text(pattern.sub(lambda _m: f"{START}\n{text}\n{END}", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
