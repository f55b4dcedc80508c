"""How the scaling bench (bench/scaling.py) reads its raw figures and judges its curve: claim
probe lines, pg_stat_activity samples, the curve's speedup and where it flattens, and a verdict
that is `measured` only for the full curve run exactly once, `failed` when work was lost or
repeated, and `not_judged` with why otherwise. No timing is asserted: the figures are made up.
"""

from __future__ import annotations

from typing import Any

from bench.scaling import (
    CLUSTERS_FULL,
    claim_stats,
    judge,
    statement_kind,
    summarize,
    table_lines,
    wait_stats,
)


def point(workload: str, clusters: int, per_second: float, **extra: Any) -> dict[str, Any]:
    return {
        "workload": workload,
        "clusters": clusters,
        "per_second": per_second,
        "exactly_once": True,
        "claims": {"p50_ms": 4.0, "p95_ms": 9.5, "rows_per_claim": 20.0},
        "commits": {"per_partition": 0.1},
        "waits": {"mean_lock_waiting": 0.2, "mean_active": 1.5},
        **extra,
    }


def full_curve() -> list[dict[str, Any]]:
    rates = {1: 500.0, 2: 900.0, 4: 950.0, 8: 960.0}
    return [
        point(w, n, rate / (10 if w == "assets.index" else 1))
        for n, rate in rates.items()
        for w in ("noop", "assets.index")
    ]


def test_claim_stats_keep_the_window_and_split_empty_claims():
    lines = [
        "100.0\t0.010\t5\t8",  # before the window
        "101.0\t0.002\t4\t4",
        "101.5\t0.004\t6\t8",
        "102.0\t0.001\t0\t8",  # found nothing
        "102.5\t0.006\t2\t8",
        "not a line",
        "",
    ]
    out = claim_stats(lines, since=101.0, until=103.0)
    assert out["claims"] == 3
    assert out["empty_claims"] == 1
    assert out["rows_per_claim"] == 4.0
    assert out["p50_ms"] == 4.0
    assert 4.0 < out["p95_ms"] <= 6.0
    assert out["unreadable"] == 2


def test_claim_stats_of_no_claims_have_no_latency():
    out = claim_stats([], since=0, until=1)
    assert out["claims"] == 0 and out["p50_ms"] is None and out["rows_per_claim"] is None


def test_wait_stats_average_per_sample_and_name_the_lock_waits():
    samples = [
        [
            ("active", "Lock", "transactionid", 2),
            ("active", None, None, 2),
            ("idle", "Client", "ClientRead", 3),
        ],
        [("active", "IO", "WALSync", 1), ("idle in transaction", "Client", "ClientRead", 1)],
    ]
    out = wait_stats(samples)
    assert out["samples"] == 2
    assert out["max_backends"] == 7
    assert out["mean_backends"] == 4.5
    assert out["mean_active"] == 2.5
    assert out["mean_lock_waiting"] == 1.0
    assert out["mean_lwlock_or_io"] == 0.5
    assert out["mean_idle_in_transaction"] == 0.5
    assert out["lock_share"] == 0.4
    assert out["events"]["Lock:transactionid"] == 1.0
    assert wait_stats([]) == {"samples": 0}


def test_the_curve_shows_speedup_efficiency_and_where_it_flattens():
    curves = summarize(full_curve())
    noop = curves["noop"]
    assert [c["clusters"] for c in noop["curve"]] == list(CLUSTERS_FULL)
    assert noop["curve"][1]["speedup"] == 1.8
    assert noop["curve"][1]["efficiency"] == 0.9
    # 900 → 950 is a gain below 10%: adding clusters stopped paying at 4.
    assert noop["flattens_at"] == 4
    assert noop["not_measured"] == []


def test_a_curve_that_keeps_rising_does_not_flatten():
    points = [point("noop", n, 100.0 * n) for n in CLUSTERS_FULL]
    assert summarize(points)["noop"]["flattens_at"] is None


def test_skipped_points_are_listed_with_why_and_never_plotted():
    points = [
        point("noop", 1, 500.0),
        {"workload": "noop", "clusters": 8, "skipped": "40 connections to spare"},
    ]
    noop = summarize(points)["noop"]
    assert [c["clusters"] for c in noop["curve"]] == [1]
    assert noop["not_measured"] == [{"clusters": 8, "why": "40 connections to spare"}]


def test_the_full_curve_run_exactly_once_is_measured():
    verdict = judge({"points": full_curve()})
    assert verdict["status"] == "measured"
    assert "contention" in verdict["why"]


def test_a_point_that_lost_or_repeated_work_fails_whatever_its_speed():
    points = full_curve()
    points[3]["exactly_once"] = False
    verdict = judge({"points": points})
    assert verdict["status"] == "failed"
    assert "assets.index at 2" in verdict["why"]


def test_a_reduced_curve_is_not_judged_and_says_why():
    points = [
        point("noop", 1, 500.0),
        point("noop", 2, 800.0),
        {"workload": "assets.index", "clusters": 1, "skipped": "quick mode runs no-op only"},
        {"workload": "assets.index", "clusters": 2, "skipped": "quick mode runs no-op only"},
    ]
    verdict = judge({"points": points})
    assert verdict["status"] == "not_judged"
    assert "assets.index at 1: quick mode runs no-op only" in verdict["why"]
    assert "reduced curve (1, 2 clusters)" in verdict["why"]


def test_a_skipped_or_failed_point_of_the_full_curve_is_not_judged():
    points = full_curve()
    points[-1] = {"workload": "assets.index", "clusters": 8, "error": "TimeoutError: slow"}
    verdict = judge({"points": points})
    assert verdict["status"] == "not_judged"
    assert "assets.index at 8: TimeoutError: slow" in verdict["why"]


def test_unreachable_services_are_not_judged():
    result = {"error": "PostgreSQL or Redis not reachable: refused", "points": []}
    assert judge(result) == {"status": "not_judged", "why": result["error"]}
    assert table_lines({**result, "verdict": judge(result)})[1].strip() == result["error"]


def test_the_table_has_a_row_per_point_and_names_what_was_not_measured():
    points = full_curve()
    points[-1] = {"workload": "assets.index", "clusters": 8, "skipped": "too few connections"}
    result = {"points": points, "curve": summarize(points)}
    lines = table_lines(result)
    assert lines[0].startswith("scaling (PostgreSQL + Redis") and "not_judged" in lines[0]
    rows = [line for line in lines if line.split()[0] in ("noop", "assets.index")]
    assert len(rows) == 8
    assert "not measured: too few connections" in rows[-1]
    assert "1.80x" in rows[2]  # noop at 2 clusters
    assert any("noop: flattens at 4 clusters" in line for line in lines)
    assert table_lines({}) == []


def test_lock_waiters_are_named_by_statement_and_table_without_values():
    assert (
        statement_kind('UPDATE "runs_app_runstage" SET "pending" = ("runs_app_runstage"."pending"')
        == "UPDATE runs_app_runstage"
    )
    assert statement_kind("INSERT INTO runs_app_claimlog (partition_id) VALUES ($1)") == (
        "INSERT runs_app_claimlog"
    )
    assert statement_kind("  select 1") == "SELECT"
    assert statement_kind("") == "?"
    out = wait_stats(
        [[("active", "Lock", "transactionid", 2)], [("active", "Lock", "transactionid", 1)]],
        [
            ['UPDATE "runs_app_run" SET "last_claim_at" = 1', 'UPDATE "runs_app_runstage" SET x'],
            ['UPDATE "runs_app_runstage" SET y'],
        ],
    )
    assert out["lock_waits_by_statement"] == {
        "UPDATE runs_app_runstage": 1.0,
        "UPDATE runs_app_run": 0.5,
    }


def test_make_bench_prints_the_sections_table_lines_as_they_are():
    from bench.run import table

    out = table({"scaling": {"table": ["scaling (PostgreSQL + Redis): measured"]}, "goals": {}})
    assert "scaling (PostgreSQL + Redis): measured" in out.splitlines()
