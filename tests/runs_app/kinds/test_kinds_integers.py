"""Integers in plans: every integer of every registered params schema (and of the stage) has
bounds the database can hold, an integral float (`1.0`) is the integer it spells, and a value
past the bounds (2^63) is a 400 with the field's path. Never a 500, whichever field."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blueprints_app.models import JobKind
from blueprints_app.registry import PARTITIONERS, load_plugin
from blueprints_app.validation import INT32_MAX, INT64_MAX, INT64_MIN, STAGE_INTEGERS
from runs_app.models import Plan, RunStage, RunState
from tests.helpers import drain

PLUGIN_DIR = Path(__file__).resolve().parents[3] / "examples" / "plugins" / "hxo_plugin_linkcheck"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))
# Every component that could be registered in a test session: the plugin and the test kinds.
load_plugin("hxo_plugin_linkcheck.components", origin="tests")
import tests.runs_app.testkinds  # noqa: E402  (registers test_items)

pytestmark = pytest.mark.django_db

BIG = 2**63


def integer_schemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, subschema) declaring type integer, anywhere in a JSON Schema (properties,
    items, combinators, $defs...): a generic walk, so no keyword is forgotten."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
            yield path, schema
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    yield from integer_schemas(sub, f"{path}.{name}" if path else name)
            elif key in ("items", "prefixItems", "additionalItems", "contains"):
                yield from integer_schemas(value, f"{path}[]")
            elif key not in ("default", "enum", "const", "examples"):
                yield from integer_schemas(value, path)
    elif isinstance(schema, list):
        for item in schema:
            yield from integer_schemas(item, path)


def test_every_integer_of_every_registered_params_schema_is_bounded_within_int64() -> None:
    # At run time, not collection time: whatever this session registered (test modules
    # register partitioners as they are imported) is checked too.
    problems = []
    for name, cls in sorted(PARTITIONERS.items()):
        for path, schema in integer_schemas(cls.get_params_schema()):
            low, high = schema.get("minimum"), schema.get("maximum")
            if low is None or high is None or not INT64_MIN <= low <= high <= INT64_MAX:
                problems.append(f"{name}: {path} has bounds {low}..{high}")
    assert "by_sql_batch" in PARTITIONERS and "by_doc_pages" in PARTITIONERS
    assert problems == []


def test_the_stage_integers_fit_their_columns() -> None:
    assert set(STAGE_INTEGERS) == {"slo_ms", "max_failed_partitions"}
    for field, schema in STAGE_INTEGERS.items():
        column = RunStage._meta.get_field(field)
        # PositiveIntegerField: a 32-bit integer on PostgreSQL.
        assert column.get_internal_type() == "PositiveIntegerField"
        assert 0 <= schema["minimum"] <= schema["maximum"] <= INT32_MAX, field


# --- posting odd integers ----------------------------------------------------------------

LINKCHECK = "docs.linkcheck"
BACKFILL = "UPDATE items SET v = v + 1 WHERE id >= :start AND id < :end"

BASES: dict[str, dict[str, Any]] = {
    "by_filesize": {
        "kind": "deploy.pack",
        "partitioner": "by_filesize",
        "executor": "pack_backend",
        "params": {"workspace": "demo", "root": "backend"},
    },
    "by_module": {
        "kind": "deploy.pack",
        "partitioner": "by_module",
        "executor": "pack_backend",
        "params": {"workspace": "demo", "root": "backend"},
    },
    "by_dag_depth": {
        "kind": "deploy.prime",
        "partitioner": "by_dag_depth",
        "executor": "warm_registry",
        "params": {"workspace": "demo", "root": "backend"},
    },
    "by_asset_bucket": {
        "kind": "assets.index",
        "partitioner": "by_asset_bucket",
        "executor": "index_assets",
        "params": {"workspace": "demo", "root": "assets"},
    },
    "by_route_map": {
        "kind": "docs.index",
        "partitioner": "by_route_map",
        "executor": "docs_index",
        "params": {"workspace": "demo", "root": "docs"},
    },
    "by_sql_batch": {
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {
            "target": "t",
            "statements": [f"UPDATE items SET v = v + {i}" for i in (1, 2, 3)],
        },
    },
    "by_sql_batch/backfill": {
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {
            "target": "t",
            "backfill": {"sql": BACKFILL, "table": "items", "key_column": "id"},
        },
    },
    "by_doc_pages": {
        "kind": LINKCHECK,
        "partitioner": "by_doc_pages",
        "executor": "docs_linkcheck",
        "params": {"workspace": "demo", "root": "docs"},
    },
    "test_items": {
        "kind": "test.quick",
        "partitioner": "test_items",
        "executor": "test_append",
        "params": {"items": 2, "dir": "{tmp}"},
    },
}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for base, stage in BASES.items():
        schema = PARTITIONERS[stage["partitioner"]].get_params_schema()
        for path, _ in integer_schemas(schema):
            if ("backfill" in base) != path.startswith("backfill."):
                continue  # a field of the other form of by_sql_batch
            if "[]" in path or ("." in path and not path.startswith("backfill.")):
                continue
            cases.append((base, f"params.{path}"))
        cases.extend((base, field) for field in STAGE_INTEGERS)
    return cases


CASES = _cases()


def test_the_cases_cover_every_registered_partitioner() -> None:
    shipped = {n for n, c in PARTITIONERS.items() if not c.__module__.startswith("tests.")}
    assert {BASES[b]["partitioner"] for b, _ in CASES} >= shipped | {"test_items"}


def _set(stage: dict[str, Any], path: str, value: Any) -> None:
    where = stage
    *parents, last = path.split(".")
    for part in parents:
        where = where[part]
    where[last] = value


def _get(stage: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        stage = stage[part]
    return stage


def _bounds(base: str, path: str) -> dict[str, Any]:
    if not path.startswith("params."):
        return STAGE_INTEGERS[path]
    schema = PARTITIONERS[BASES[base]["partitioner"]].get_params_schema()
    return dict(integer_schemas(schema))[path.removeprefix("params.")]


@pytest.fixture
def world(demo_copy, sqlite_target, tmp_path, settings) -> dict[str, Any]:
    """The demo workspace, a SQLite target "t" with a table, and the plugin's kind."""
    db = sqlite_target("t")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        conn.executemany("INSERT INTO items (id, v) VALUES (?, 0)", [(i,) for i in range(1, 51)])
    from hxo_plugin_linkcheck.components import KIND_DEFINITION

    JobKind.objects.update_or_create(
        kind=LINKCHECK, defaults={k: v for k, v in KIND_DEFINITION.items() if k != "kind"}
    )
    tests.runs_app.testkinds.make_test_kinds()
    return {"tmp": str(tmp_path)}


def _stage(base: str, world: dict[str, Any]) -> dict[str, Any]:
    import copy

    stage = copy.deepcopy(BASES[base])
    if "dir" in stage["params"]:
        stage["params"]["dir"] = world["tmp"]
    return {"id": "s", **stage}


@pytest.mark.parametrize(("base", "path"), CASES)
def test_an_integral_float_is_the_integer_it_spells(
    world, admiral, api_client_for, base, path
) -> None:
    client = api_client_for(admiral)
    stage = _stage(base, world)
    value = float(_bounds(base, path)["minimum"] + (1 if path.endswith("batch_size") else 0))
    if path == "slo_ms":
        value = 600_000.0
    _set(stage, path, value)
    created = client.post("/api/v1/plans/", {"name": "f", "stages": [stage]}, format="json")
    assert created.status_code == 201, created.json()
    stored = Plan.objects.get(pk=created.json()["id"]).latest_revision.document["stages"][0]
    assert _get(stored, path) == int(value) and type(_get(stored, path)) is int
    started = client.post(f"/api/v1/plans/{created.json()['id']}/dry-run/")
    assert started.status_code == 202, started.json()
    run = drain(started.json()["id"])
    assert run.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED), run.error
    if not path.startswith("params."):
        assert getattr(RunStage.objects.get(run=run), path) == int(value)


@pytest.mark.parametrize("big", [BIG, float(BIG), -BIG - 1, 10**30])
@pytest.mark.parametrize(("base", "path"), CASES)
def test_an_integer_past_its_bounds_is_a_400_with_its_path(
    world, admiral, api_client_for, base, path, big
) -> None:
    client = api_client_for(admiral)
    stage = _stage(base, world)
    _set(stage, path, big)
    response = client.post("/api/v1/plans/", {"name": "b", "stages": [stage]}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "validation_failed"
    assert f"stages[0].{path}" in {e["path"] for e in body["errors"]}
    assert Plan.objects.count() == 0
    checked = client.post("/api/v1/validate/", {"stage": stage}, format="json")
    assert checked.status_code == 200 and checked.json()["valid"] is False
