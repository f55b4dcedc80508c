"""The README's Performance table is generated from the bench's results (bench/readme.py): real
workloads first, every figure with its goal's status and the load it was taken under."""

from __future__ import annotations

from bench.readme import END, START, TIMES, table
from bench.run import goals


def results() -> dict:
    real = {
        "pack": {"hxo_s": 2.0, "baseline_s": 1.0, "ratio": 0.5, "files": 6869},
        "docs_index": {"hxo_s": 4.0, "baseline_s": 3.0, "ratio": 0.75, "pages": 621},
        "others_cpu_share": 0.1,
    }
    res = {
        "quick": False,
        "when": "2026-11-30T12:00:00Z",
        "machine": {"cpus": 2, "cpu": "AMD EPYC"},
        "real": real,
        "validation": {"plans": {"50": {"p95_ms": 9.0}}, "others_cpu_share": 0.6},
    }
    res["goals"] = goals(res)
    return res


def test_real_workloads_come_first_with_status_and_load():
    lines = table(results()).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| what")]
    assert "Django 5.2 sdist (6,869 files)" in rows[0] and "| 0.50" in rows[0]
    # A miss links the profile that explains it.
    assert "≥ 1.5 [❌](bench/profiles/pack.md)" in rows[0] and "others 10% CPU" in rows[0]
    assert "Django's docs (621 pages)" in rows[1] and "≥ 0.5 ✅" in rows[1]
    # Taken under load: shown, not judged.
    assert "live validation" in rows[2] and "not judged" in rows[2] and "60%" in rows[2]
    assert "`run_start_p95_ms`" in lines[-1]  # goals no run measures are named


def test_the_readme_has_the_generated_block():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert readme.index(START) < readme.index(END)


def test_run_start_celery_and_memory_rows():
    res = results()
    res["orchestration_scaled"] = {
        "hxo": {"partitions": 5000, "per_second": 3000.0},
        "raw_django_q2": {"tasks": 1000, "per_second": 300.0},
        "floor": {"per_second": 1000.0},
    }
    res["celery"] = {"celery": "5.7.0", "tasks": 5000, "per_second": 750.0}
    res["serving"] = {
        "run_start": {"10": {"p95_ms": 40.0}, "10000": {"p95_ms": 45.0}},
        "worker_memory": {"partitions": 20000, "peak_rss_mb": 120.4},
        "web_memory": {"partitions": 20000, "peak_rss_mb": 101.0},
    }
    res["goals"] = goals(res)
    text = table(res)
    assert "against Celery 5.7.0" in text and f"| 4.0{TIMES}" in text
    assert "p95 40 / 45 ms" in text and "≤ 100 not judged" in text  # 100,000 not measured
    assert "20,000 partitions | 120 MB" in text
