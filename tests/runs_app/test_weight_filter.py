"""The run page's `weight` filter asks the stage's partitioner how to read a weight."""

from __future__ import annotations

from typing import Any

from django.template.defaultfilters import filesizeformat

from blueprints_app.registry import PARTITIONERS, Partitioner
from runs_app.templatetags.hxo import weight


def test_a_weight_reads_as_its_partitioner_describes_it() -> None:
    assert weight(1234, "by_sql_batch") == "1,234 rows"
    assert weight(1234, "test_items") == "1,234"
    assert weight(1536, "by_filesize") == filesizeformat(1536)
    assert weight(5, "") == "5"


def test_a_partitioner_that_says_nothing_or_is_gone_weighs_bytes(monkeypatch: Any) -> None:
    class Pages(Partitioner):
        name = "by_pages"

        @classmethod
        def describe_weight(cls, weight: int) -> str:
            return f"{weight} pages"

    monkeypatch.setitem(PARTITIONERS, "by_pages", Pages)

    assert weight(3, "by_pages") == "3 pages"
    assert weight(2048, "no_longer_registered") == filesizeformat(2048)
