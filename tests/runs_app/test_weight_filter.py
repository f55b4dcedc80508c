"""The run page's `weight` filter asks the stage's partitioner how to read a weight."""

from __future__ import annotations

from typing import Any

from django.template.defaultfilters import filesizeformat

from blueprints_app.registry import PARTITIONERS, Partitioner, describe_weight
from runs_app.models import RunStage
from runs_app.selectors import stage_progress
from runs_app.templatetags.hxo import weight


def test_a_weight_reads_as_its_partitioner_describes_it() -> None:
    assert weight(1234, "by_sql_batch") == "1,234"  # statements or rows: the params say
    assert weight(1234, "test_items") == "1,234"
    assert weight(1536, "by_filesize") == filesizeformat(1536)
    assert weight(5, "") == "5"


def test_a_partitioner_that_says_nothing_or_is_gone_weighs_bytes(monkeypatch: Any) -> None:
    class Pages(Partitioner):
        name = "by_pages"

        @classmethod
        def describe_weight(cls, weight: int, params: Any = None) -> str:
            return f"{weight} pages"

    monkeypatch.setitem(PARTITIONERS, "by_pages", Pages)

    assert weight(3, "by_pages") == "3 pages"
    assert weight(2048, "no_longer_registered") == filesizeformat(2048)


def test_a_statement_batch_stage_weighs_statements_and_a_backfill_rows() -> None:
    # Issue 15 §7: a 6-statement migration was labelled "6 rows".
    statements = {"target": "demo", "statements": ["ALTER TABLE t ADD c int"] * 6}
    backfill = {"target": "demo", "backfill": {"sql": "UPDATE t SET c = 1", "table": "t"}}
    assert describe_weight("by_sql_batch", 6, statements) == "6 statements"
    assert describe_weight("by_sql_batch", 1, statements) == "1 statement"
    assert describe_weight("by_sql_batch", 20000, backfill) == "20,000 rows"


def test_the_run_pages_stage_label_comes_from_the_stages_params() -> None:
    stage = RunStage(
        stage_id="schema",
        kind="deploy.migrate",
        partitioner="by_sql_batch",
        executor="sql_migrate",
        params={"target": "demo", "statements": ["ALTER TABLE t ADD c int"] * 6},
        slo_ms=1000,
        weight=6,
    )
    assert stage_progress(stage)["weight_label"] == "6 statements"
