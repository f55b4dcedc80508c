"""Workspaces and targets: paths stay inside their workspace, and only registered databases are
ever connected to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blueprints_app.registry import PARTITIONERS, ComponentError
from runs_app.sqlpolicy import analyse
from runs_app.targets import connect, get_target, to_driver_sql
from runs_app.workspaces import get_workspace

pytestmark = pytest.mark.django_db

WORKSPACE_PARTITIONERS = [
    "by_filesize",
    "by_module",
    "by_dag_depth",
    "by_asset_bucket",
    "by_route_map",
]
KIND_OF = {
    "by_filesize": "deploy.pack",
    "by_module": "deploy.pack",
    "by_dag_depth": "deploy.prime",
    "by_asset_bucket": "assets.index",
    "by_route_map": "docs.index",
}


def stage(partitioner: str, **params: object) -> dict:
    return {
        "id": "s",
        "kind": KIND_OF[partitioner],
        "partitioner": partitioner,
        "executor": "x",
        "params": {"workspace": "t", **params},
    }


@pytest.mark.parametrize("partitioner", WORKSPACE_PARTITIONERS)
@pytest.mark.parametrize(
    "root",
    ["../", "app/../../etc", "/etc", "app/\x00x", "C:/Windows", "app\\..\\.."],
)
def test_every_workspace_partitioner_refuses_paths_that_leave_the_workspace(
    driver, workspace, partitioner, root
):
    with pytest.raises(ComponentError) as info:
        driver.partition(stage(partitioner, root=root))

    assert info.value.code == "path_escape"
    assert info.value.path == "params.root"


@pytest.mark.parametrize("partitioner", WORKSPACE_PARTITIONERS)
def test_a_root_that_is_a_symlink_out_of_the_workspace_is_refused(
    driver, workspace, tmp_path, partitioner
):
    outside = tmp_path / "outside"
    (outside / "docs").mkdir(parents=True)
    (outside / "docs" / "secret.md").write_text("# secret\n")
    (workspace / "escape").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ComponentError) as info:
        driver.partition(stage(partitioner, root="escape"))

    assert info.value.code == "path_escape"


def test_a_symlink_inside_the_workspace_is_followed_and_one_leaving_it_is_skipped(
    workspace, tmp_path
):
    (tmp_path / "outside.txt").write_text("secret")
    (workspace / "app" / "inside-link.txt").symlink_to(workspace / "app" / "static" / "logo.txt")
    (workspace / "app" / "outside-link.txt").symlink_to(tmp_path / "outside.txt")
    (workspace / "app" / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    (workspace / "app" / "broken.txt").symlink_to(workspace / "app" / "missing.txt")

    ws = get_workspace("t")
    files = [f.rel for f in ws.list_files("app")]

    assert "app/inside-link.txt" in files
    assert "app/outside-link.txt" not in files
    assert "app/dangling.txt" not in files
    # Left out, never silently: the listing says what and why.
    assert sorted((r["path"], r["code"]) for r in ws.refused) == [
        ("app/broken.txt", "dangling_symlink"),
        ("app/dangling.txt", "symlink_outside_workspace"),  # its target would be outside
        ("app/outside-link.txt", "symlink_outside_workspace"),
    ]


def test_a_pinned_file_that_became_an_escaping_symlink_is_refused_at_execution(
    driver, workspace, tmp_path
):
    from blueprints_app.registry import EXECUTORS

    pack = {**stage("by_filesize", root="app"), "executor": "pack_backend"}
    kind, manifest, data = driver.partition(pack)
    (tmp_path / "evil.py").write_text("stolen = True\n")
    target = workspace / "app" / "util.py"
    target.unlink()
    target.symlink_to(tmp_path / "evil.py")
    ctx = driver.context(pack, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["pack_backend"]().execute(ctx)

    assert info.value.code == "path_escape"


@pytest.mark.parametrize("partitioner", WORKSPACE_PARTITIONERS)
def test_an_unregistered_workspace_is_refused(driver, workspace, partitioner):
    with pytest.raises(ComponentError) as info:
        driver.partition({**stage(partitioner), "params": {"workspace": "/etc"}})

    assert info.value.code in ("invalid_params", "unknown_workspace")
    assert info.value.path == "params.workspace"


def test_get_workspace_names_unknown_workspaces_with_their_code(settings):
    settings.HXO_WORKSPACES = {}
    with pytest.raises(ComponentError) as info:
        get_workspace("demo")
    assert info.value.code == "unknown_workspace"


def test_params_schemas_offer_only_registered_workspaces_and_targets(settings, tmp_path):
    settings.HXO_WORKSPACES = {"alpha": str(tmp_path), "beta": str(tmp_path)}
    settings.HXO_DATABASE_TARGETS = {"warehouse": "sqlite:///x.sqlite3"}

    for name in WORKSPACE_PARTITIONERS:
        schema = PARTITIONERS[name].get_params_schema()
        assert schema["properties"]["workspace"]["enum"] == ["alpha", "beta"]
        assert schema["properties"]["workspace"]["x-hxo-widget"] == "workspace"
        assert schema["required"] == ["workspace"]  # no "demo" to default to
    target = PARTITIONERS["by_sql_batch"].get_params_schema()["properties"]["target"]
    assert target["enum"] == ["warehouse"] and target["x-hxo-widget"] == "target"


def test_every_params_schema_is_a_valid_json_schema_with_defaults_and_descriptions():
    from blueprints_app.validation import check_schema

    for name, cls in PARTITIONERS.items():
        if name.startswith("test_"):
            continue
        schema = cls.get_params_schema()
        assert check_schema(schema) is None, name
        for prop_name, prop in schema["properties"].items():
            assert prop.get("description") or prop.get("title"), (name, prop_name)


def test_an_unregistered_target_is_refused_and_the_hxo_database_is_not_a_target(settings):
    settings.HXO_DATABASE_TARGETS = {"demo": "sqlite:///nowhere.sqlite3"}

    for name in ("default", "postgres://postgres@127.0.0.1/test", "", None):
        with pytest.raises(ComponentError) as info:
            get_target(name)
        assert info.value.code == "unknown_target"
        assert info.value.path == "params.target"


def test_an_unsupported_database_url_is_refused(settings):
    settings.HXO_DATABASE_TARGETS = {"maria": "mysql://root@127.0.0.1/test"}

    with pytest.raises(ComponentError) as info:
        get_target("maria")

    assert info.value.code == "unsupported_target"


def test_named_parameters_become_psycopg_placeholders_outside_literals_only():
    sql = "UPDATE t SET a = '50%:x', b = c::text WHERE id >= :start AND id < :end -- :no"
    assert to_driver_sql(sql, "postgresql") == (
        "UPDATE t SET a = '50%%:x', b = c::text WHERE id >= %(start)s AND id < %(end)s -- :no"
    )
    for vendor in ("postgresql", "sqlite"):
        assert analyse(sql, vendor).params == ("start", "end")
        assert len(analyse("SELECT 1; SELECT 2;", vendor).statements) == 2
        assert len(analyse("SELECT ';' ; ", vendor).statements) == 1
        assert analyse("/* c */ update x set y = 1", vendor).verb == "UPDATE"


def test_a_sqlite_target_is_opened_without_creating_it(settings, tmp_path):
    path = tmp_path / "absent.sqlite3"
    settings.HXO_DATABASE_TARGETS = {"absent": f"sqlite:///{path}"}

    with pytest.raises(ComponentError) as info, connect("absent"):
        pass

    assert info.value.code == "target_unavailable"
    assert not Path(path).exists()
    assert not os.path.exists(str(path) + "-journal")
