"""Hard links across the workspace boundary, for every kind that lists workspace files.

A hard link has no target to resolve: `os.link("/outside/secret.py", "ws/app/secret.py")`
makes a regular file whose bytes are the outside file's. The shared walker
(`Workspace.list_files`) refuses a file with more than one link unless it finds every link
inside the workspace; each kind's output names what was refused. Links between two files of
the workspace stay allowed, even when the other link is outside the listed root or under a
pruned directory (`.git`).
"""

from __future__ import annotations

import importlib.util
import os
import tarfile
from pathlib import Path

import pytest

from runs_app.kinds.prime import registry_get
from runs_app.models import AssetIndexEntry, DocPage
from runs_app.workspaces import HARD_LINK_OUTSIDE, get_workspace
from tests.runs_app.kinds.conftest import write_files

pytestmark = pytest.mark.django_db

SECRET_PY = "TOKEN = 'stolen'\n"
SECRET_MD = "# Secret handbook\n\nThe launch code is swordfish.\n"
# A real 1x1 PNG (signature, IHDR, IDAT, IEND).
SECRET_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the workspace, as an attacker (or a careless `cp -l`) would link."""
    root = tmp_path / "outside"
    write_files(root, {"secret.py": SECRET_PY, "secret.md": SECRET_MD, "secret.png": SECRET_PNG})
    return root


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def stage(kind: str, partitioner: str, executor: str, root: str) -> dict:
    return {
        "id": "s",
        "kind": kind,
        "partitioner": partitioner,
        "executor": executor,
        "params": {"workspace": "t", "root": root},
    }


def refused_paths(out: dict) -> set[str]:
    return {r["path"] for r in out.get("refused_files", []) if r["code"] == HARD_LINK_OUTSIDE}


def test_the_walker_refuses_a_hard_link_to_an_outside_file_and_says_why(workspace, outside):
    link(outside / "secret.py", workspace / "app" / "secret.py")

    ws = get_workspace("t")
    files = [f.rel for f in ws.list_files("app")]

    assert "app/secret.py" not in files
    assert "app/util.py" in files
    assert ws.refused == [
        {
            "path": "app/secret.py",
            "code": HARD_LINK_OUTSIDE,
            "reason": "a hard link: 2 links, 1 of them inside the workspace",
        }
    ]


def test_hard_links_whose_every_link_is_inside_the_workspace_are_listed(workspace):
    # Same directory, another directory outside the listed root, and a pruned directory.
    link(workspace / "app/util.py", workspace / "app/util_copy.py")
    link(workspace / "app/text.py", workspace / "vendor/text.py")
    link(workspace / "app/api.py", workspace / ".git/objects/api")

    ws = get_workspace("t")
    files = [f.rel for f in ws.list_files("app")]

    assert {"app/util.py", "app/util_copy.py", "app/text.py", "app/api.py"} <= set(files)
    assert ws.refused == []


def test_a_third_link_outside_refuses_a_file_even_when_two_are_inside(workspace, outside):
    link(outside / "secret.py", workspace / "app/a.py")
    link(outside / "secret.py", workspace / "app/b.py")

    ws = get_workspace("t")
    files = [f.rel for f in ws.list_files(".")]

    assert "app/a.py" not in files and "app/b.py" not in files
    assert {r["path"] for r in ws.refused} == {"app/a.py", "app/b.py"}


def test_a_root_that_is_itself_a_hard_linked_file_is_refused(workspace, outside):
    link(outside / "secret.md", workspace / "README.md")

    ws = get_workspace("t")

    assert ws.list_files("README.md") == []
    assert [r["path"] for r in ws.refused] == ["README.md"]


def test_pack_leaves_an_outside_hard_link_out_of_the_archive_and_reports_it(
    driver, workspace, outside, scratch
):
    link(outside / "secret.py", workspace / "app/secret.py")

    for partitioner in ("by_filesize", "by_module"):
        run = driver.run(stage("deploy.pack", partitioner, "pack_backend", "app"), dry_run=False)

        members: set[str] = set()
        for out in run.results:
            with tarfile.open(scratch["artifacts"] / out["archive"], "r:gz") as tar:
                members |= set(tar.getnames())
                for m in tar.getmembers():
                    assert b"stolen" not in tar.extractfile(m).read()
            assert refused_paths(out) == {"app/secret.py"}
            assert out["refused_files_count"] == 1
        assert "app/secret.py" not in members
        assert "app/util.py" in members
        listed = {
            str(p.relative_to(workspace)) for p in (workspace / "app").rglob("*") if p.is_file()
        }
        assert members == listed - {"app/secret.py"}


def test_a_pack_dry_run_reports_the_refused_file_too(driver, workspace, outside):
    link(outside / "secret.py", workspace / "app/secret.py")

    run = driver.run(stage("deploy.pack", "by_filesize", "pack_backend", "app"), dry_run=True)

    assert all(refused_paths(out) == {"app/secret.py"} for out in run.results)
    assert all("app/secret.py" not in [f["path"] for f in out["files"]] for out in run.results)


def test_prime_compiles_no_bytecode_and_writes_no_registry_entry_for_it(
    driver, workspace, outside, scratch
):
    link(outside / "secret.py", workspace / "app/secret.py")

    compiled = driver.run(stage("deploy.prime", "by_module", "prime_caches", "app"), dry_run=False)
    warmed = driver.run(
        stage("deploy.prime", "by_dag_depth", "warm_registry", "app"), dry_run=False
    )

    tag = importlib.util.cache_from_source("x.py").rsplit(".", 2)[-2]
    pyc_dir = scratch["bytecode"] / "t" / "app" / "__pycache__"
    assert (pyc_dir / f"util.{tag}.pyc").exists()
    assert not (pyc_dir / f"secret.{tag}.pyc").exists()
    entries = registry_get("t", ["app.util", "app.secret"])
    assert "app.util" in entries
    assert "app.secret" not in entries
    for out in [*compiled.results, *warmed.results]:
        assert refused_paths(out) == {"app/secret.py"}
        assert "secret" not in out["module"]


def test_docs_index_does_not_index_an_outside_hard_link(driver, workspace, outside):
    write_files(workspace, {"docs/index.md": "# Home\n\nWelcome.\n"})
    link(outside / "secret.md", workspace / "docs/secret.md")

    run = driver.run(stage("docs.index", "by_route_map", "docs_index", "docs"), dry_run=False)

    assert DocPage.objects.filter(workspace="t").count() == 1
    assert not DocPage.objects.filter(body__contains="swordfish").exists()
    assert not DocPage.objects.filter(path="docs/secret.md").exists()
    assert all(refused_paths(out) == {"docs/secret.md"} for out in run.results)


@pytest.mark.parametrize("kind", ["assets.index", "assets.stage"])
def test_assets_neither_index_nor_stage_an_outside_hard_link(
    driver, workspace, outside, scratch, kind
):
    write_files(workspace, {"static/site.css": "body { margin: 0 }\n"})
    link(outside / "secret.png", workspace / "static/img/secret.png")

    run = driver.run(stage(kind, "by_asset_bucket", "index_assets", "static"), dry_run=False)

    assert not AssetIndexEntry.objects.filter(path="static/img/secret.png").exists()
    staged = [p.name for p in scratch["staging"].rglob("*") if p.is_file()]
    assert not [n for n in staged if n.startswith("secret.")]
    if kind == "assets.index":
        assert list(AssetIndexEntry.objects.values_list("path", flat=True)) == ["static/site.css"]
    else:
        assert any(n.startswith("site.") and n.endswith(".css") for n in staged)
    assert all(refused_paths(out) == {"static/img/secret.png"} for out in run.results)


def test_a_clean_tree_adds_nothing_to_manifests_or_outputs(driver, workspace):
    run = driver.run(stage("deploy.pack", "by_filesize", "pack_backend", "app"), dry_run=False)

    assert "refused_files" not in run.data
    assert all("refused_files" not in out for out in run.results)
