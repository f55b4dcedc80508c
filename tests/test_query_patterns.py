"""Query shapes that look right and are not, checked across the code (read with `ast`).

DISTINCT and a model's `Meta.ordering`: Django adds the ordering's columns to the SELECT of
a `.distinct()` query, so `Partition.objects.values_list("stage_id").distinct()` answers one
row per partition (`SELECT DISTINCT stage_id, index ... ORDER BY stage_id, index`), not one
per stage (Django's documentation of `distinct()`, "any fields used in an order_by() call
are included in the SQL SELECT columns"). Cancelling partitions once ran one UPDATE per
such row, 2,000 per batch: a 100,000-partition abort answered after more than 60 s on
PostgreSQL. Every `.distinct()` therefore sits in a chain that says its ordering
(`.order_by(...)`, empty to clear it) or only counts (`.count()` drops the ordering).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runs_app", "blueprints_app", "notify_app", "hxo_site", "bench")


def _chain(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> set[str]:
    """Method names called on the same expression chain as `node`, before and after it."""
    names: set[str] = set()
    down: ast.AST = node
    while isinstance(down, ast.Call | ast.Attribute):
        if isinstance(down, ast.Attribute):
            names.add(down.attr)
            down = down.value
        else:
            down = down.func
    up = node
    while up in parents and isinstance(parents[up], ast.Call | ast.Attribute):
        up = parents[up]
        if isinstance(up, ast.Attribute):
            names.add(up.attr)
    return names


def distinct_without_ordering(source: str, filename: str = "<src>") -> list[int]:
    """Lines of `.distinct()` calls whose chain neither orders nor only counts."""
    tree = ast.parse(source, filename=filename)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "distinct"
        ):
            chain = _chain(node, parents)
            if not chain & {"order_by", "count"}:
                lines.append(node.lineno)
    return lines


def test_every_distinct_query_says_its_ordering() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for line in distinct_without_ordering(path.read_text(encoding="utf-8"), str(path)):
                found.append(f"{path.relative_to(ROOT)}:{line}")
    assert found == [], "add .order_by() (empty to clear Meta.ordering) before .distinct()"


def test_the_check_sees_a_distinct_that_keeps_the_models_ordering() -> None:
    bad = 'rows = list(qs.filter(state=s).values_list("stage_id").distinct())\n'
    assert distinct_without_ordering(bad) == [1]
    good = [
        'rows = list(qs.values_list("stage_id").order_by().distinct())\n',
        'n = qs.values("user").distinct().count()\n',
        'x = (\n    qs.values("a")\n    .distinct()\n    .order_by("a")\n)\n',
    ]
    assert [distinct_without_ordering(src) for src in good] == [[], [], []]
