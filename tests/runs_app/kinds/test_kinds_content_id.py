"""Content ids cover everything that decides a partition's effect (docs/architecture.md,
"Identifiers").

For every registered partitioner and every param of its schema: changing the param changes
every content id of the stage, and a workspace or target re-pointed in settings (same name, other
place) does too. Writing a default out or leaving it, and fields that change no effect (stage
id, SLO, failure budget), keep them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import types
from typing import Any

import pytest

from blueprints_app.models import JobKind
from blueprints_app.registry import PARTITIONERS, load_plugin
from blueprints_app.registry_io import registry_import
from runs_app.manifest import resolve_manifest
from tests.runs_app.kinds.conftest import EXAMPLES

PLUGIN_DIR = EXAMPLES / "plugins" / "hxo_plugin_linkcheck"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))
load_plugin("hxo_plugin_linkcheck.components", origin="tests")

pytestmark = pytest.mark.django_db

STATEMENTS = ["UPDATE items SET n = n + 1", "UPDATE items SET n = n * 2"]

# partitioner → (kind, executor, base params)
BASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "by_filesize": ("deploy.pack", "pack_backend", {"workspace": "demo", "root": "backend"}),
    "by_module": ("deploy.pack", "pack_backend", {"workspace": "demo", "root": "backend"}),
    "by_dag_depth": ("deploy.prime", "warm_registry", {"workspace": "demo", "root": "backend"}),
    "by_asset_bucket": ("assets.index", "index_assets", {"workspace": "demo", "root": "assets"}),
    "by_route_map": ("docs.index", "docs_index", {"workspace": "demo", "root": "docs"}),
    "by_doc_pages": ("docs.linkcheck", "docs_linkcheck", {"workspace": "demo", "root": "docs"}),
    "by_sql_batch": ("deploy.migrate", "sql_migrate", {"target": "lite", "statements": STATEMENTS}),
    "test_items": ("test.quick", "test_append", {"items": 3, "dir": "{tmp}/items"}),
}

# partitioner → param → another valid value (every param of the schema has one)
OTHER: dict[str, dict[str, Any]] = {
    "by_filesize": {
        "workspace": "twin",
        "root": "backend/api",
        "include": ["*.py"],
        "exclude": ["*.md"],
        "chunk_size_mb": 2,
        "max_files": 3,
        "compress_level": 9,
    },
    "by_module": {
        "workspace": "twin",
        "root": "backend/api",
        "include": ["*.py"],
        "exclude": ["*_test.py"],
        "compress_level": 9,
        "on_module_error": "fail",
        "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "python_executable": os.path.realpath(sys.executable),
        "package_roots": ["."],
    },
    "by_dag_depth": {
        "workspace": "twin",
        "root": "backend/api",
        "include": ["*.py"],
        "exclude": ["*_test.py"],
        "on_module_error": "fail",
        "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "python_executable": os.path.realpath(sys.executable),
        "package_roots": ["."],
    },
    "by_asset_bucket": {
        "workspace": "twin",
        "root": "assets/images",
        "include": ["*"],
        "exclude": ["*.map"],
        "buckets": ["images", "styles"],
    },
    "by_route_map": {"workspace": "twin", "root": "docs/api", "base_route": "/help/"},
    "by_doc_pages": {
        "workspace": "twin",
        "root": "docs/api",
        "base_route": "/help/",
        "pages_per_partition": 3,
        "check_anchors": False,
        "fail_on_broken": False,
        "ignore": ["http*"],
    },
    "by_sql_batch": {
        "target": "lite2",
        "statements": ["UPDATE items SET n = n + 2", "UPDATE items SET n = n * 2"],
        "batch_size": 2,
        "backfill": {
            "sql": "UPDATE items SET n = n + 1 WHERE id >= :start AND id < :end",
            "table": "items",
            "key_column": "id",
        },
        "statement_timeout_ms": 1000,
        "lock_timeout_ms": 100,
        "health": {"max_lock_waits": 0},
    },
    "test_items": {
        "items": 4,
        "dir": "{tmp}/other",
        "fail": {"9": 1},
        "block": [99],
        "salt": "pepper",
    },
}


def _make_items_db(path: Any) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.executemany("INSERT INTO items VALUES (?, 1)", [(i,) for i in range(1, 5)])
    conn.close()


@pytest.fixture
def places(demo_copy, tmp_path, settings, sqlite_target, test_kinds) -> dict[str, Any]:
    """demo and a byte-identical copy "twin"; SQLite targets lite and lite2 with `items`."""
    twin = tmp_path / "twin"
    shutil.copytree(demo_copy, twin)
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "twin": str(twin)}
    for name in ("lite", "lite2"):
        _make_items_db(sqlite_target(name))
    registry_import(data=json.loads((PLUGIN_DIR / "kind.json").read_text()))
    return {"tmp": tmp_path, "twin": twin, "demo": demo_copy}


def _fill(value: Any, tmp: Any) -> Any:
    return json.loads(json.dumps(value).replace("{tmp}", str(tmp)))


def content_ids(stage: dict[str, Any]) -> list[str]:
    kind = JobKind.objects.get(kind=stage["kind"])
    revision = types.SimpleNamespace(stages=[stage], digest="r", kind_versions={})
    resolved = resolve_manifest(revision, {kind.kind: kind})  # type: ignore[arg-type]
    [rs] = resolved.stages
    assert rs.content_ids, f"{stage['partitioner']} made no partition"
    return rs.content_ids


def stage_of(partitioner: str, tmp: Any, **changes: Any) -> dict[str, Any]:
    kind, executor, params = BASES[partitioner]
    return {
        "id": "s",
        "kind": kind,
        "partitioner": partitioner,
        "executor": executor,
        "params": _fill({**params, **changes}, tmp),
        "depends_on": [],
    }


def test_every_partitioner_and_every_param_has_a_case():
    # Built-in and plugin partitioners; test-only ones of other modules may come and go.
    shipped = {n: c for n, c in PARTITIONERS.items() if not c.__module__.startswith("tests.")}
    assert "by_doc_pages" in shipped
    for name, cls in shipped.items():
        if name.startswith("bench_"):
            continue
        assert name in OTHER, name
        assert set(cls.get_params_schema().get("properties", {})) == set(OTHER[name]), name


# Params that decide when the work runs, never what it does ("x-hxo-no-effect" in the schema).
NO_EFFECT = {("by_sql_batch", "health")}

PARAM_CASES = [
    pytest.param(partitioner, param, id=f"{partitioner}.{param}")
    for partitioner in sorted(OTHER)
    for param in sorted(OTHER[partitioner])
    if (partitioner, param) not in NO_EFFECT
]


@pytest.mark.parametrize(("partitioner", "param"), sorted(NO_EFFECT))
def test_a_param_that_changes_no_effect_keeps_every_content_id(partitioner, param, places):
    base = stage_of(partitioner, places["tmp"])
    changed = stage_of(partitioner, places["tmp"], **{param: OTHER[partitioner][param]})
    assert changed["params"] != base["params"]
    assert PARTITIONERS[partitioner].get_params_schema()["properties"][param]["x-hxo-no-effect"]

    assert content_ids(base) == content_ids(changed)


@pytest.mark.parametrize(("partitioner", "param"), PARAM_CASES)
def test_changing_any_param_changes_every_content_id(partitioner, param, places):
    tmp = places["tmp"]
    (tmp / "items").mkdir(exist_ok=True)
    (tmp / "other").mkdir(exist_ok=True)
    base = stage_of(partitioner, tmp)
    changed = stage_of(partitioner, tmp, **{param: OTHER[partitioner][param]})
    if param == "backfill":
        del changed["params"]["statements"]
    assert changed["params"] != base["params"]

    before, after = content_ids(base), content_ids(changed)

    assert not set(before) & set(after)


@pytest.mark.parametrize("partitioner", ["by_filesize", "by_route_map", "by_doc_pages"])
def test_a_workspace_name_pointed_at_another_directory_changes_every_content_id(
    partitioner, places, settings
):
    before = content_ids(stage_of(partitioner, places["tmp"]))
    # The same name, a byte-identical copy somewhere else: other effects (another tree).
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "demo": str(places["twin"])}

    after = content_ids(stage_of(partitioner, places["tmp"]))

    assert not set(before) & set(after)


def test_a_target_name_pointed_at_another_database_changes_every_content_id(
    places, settings, tmp_path
):
    before = content_ids(stage_of("by_sql_batch", tmp_path))
    other = tmp_path / "elsewhere.sqlite3"
    _make_items_db(other)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "lite": f"sqlite:///{other}"}

    after = content_ids(stage_of("by_sql_batch", tmp_path))

    assert not set(before) & set(after)


def test_two_names_for_one_database_reach_the_same_identity(places, settings, tmp_path):
    from runs_app.targets import get_target

    link = tmp_path / "alias.sqlite3"
    link.symlink_to(tmp_path / "lite.sqlite3")
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "alias": f"sqlite:///{link}"}

    assert get_target("alias").identity == get_target("lite").identity
    assert "lite.sqlite3" in get_target("alias").identity


@pytest.mark.parametrize(
    ("partitioner", "defaults"),
    [
        ("by_filesize", {"compress_level": 5, "chunk_size_mb": 1, "max_files": 1000}),
        ("by_module", {"compress_level": 5, "include": [], "exclude": []}),
        ("by_route_map", {"base_route": "/docs/"}),
        ("by_sql_batch", {"batch_size": 1, "statement_timeout_ms": 30000}),
    ],
)
def test_writing_a_default_out_keeps_every_content_id(partitioner, defaults, places):
    assert content_ids(stage_of(partitioner, places["tmp"])) == content_ids(
        stage_of(partitioner, places["tmp"], **defaults)
    )


def test_a_backfill_batch_size_written_out_or_left_to_its_default_is_one_content_id(places):
    backfill = dict(OTHER["by_sql_batch"]["backfill"])
    implicit = stage_of("by_sql_batch", places["tmp"], backfill=backfill)
    explicit = stage_of("by_sql_batch", places["tmp"], backfill={**backfill, "batch_size": 1000})
    for stage in (implicit, explicit):
        del stage["params"]["statements"]

    assert content_ids(implicit) == content_ids(explicit)


def test_fields_that_change_no_effect_keep_every_content_id(places):
    base = stage_of("by_filesize", places["tmp"])
    other = {**base, "id": "renamed", "slo_ms": 5, "max_failed_partitions": 3}

    assert content_ids(base) == content_ids(other)
