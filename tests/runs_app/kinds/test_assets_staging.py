"""assets.stage keeps each workspace's copies and manifests in a folder of its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runs_app.kinds.assets import staged_name, staging_folder
from tests.runs_app.kinds.conftest import backdate, tree_snapshot, write_files

pytestmark = pytest.mark.django_db

LOGO = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"/>\n'


def stage_stage(workspace: str) -> dict:
    return {
        "id": "stage",
        "kind": "assets.stage",
        "partitioner": "by_asset_bucket",
        "executor": "index_assets",
        "params": {"workspace": workspace, "root": "static"},
    }


@pytest.fixture
def two_workspaces(tmp_path: Path, settings, scratch) -> dict[str, Path]:
    """Workspaces "one" and "two" with the same relative paths: `css/site.css` differs,
    `img/logo.svg` is byte-identical."""
    roots = {}
    for name in ("one", "two"):
        root = tmp_path / name
        write_files(
            root,
            {
                "static/css/site.css": f"/* {name} */ body {{ margin: 0 }}\n",
                "static/img/logo.svg": LOGO,
            },
        )
        roots[name] = root
    settings.HXO_WORKSPACES = {
        **settings.HXO_WORKSPACES,
        **{name: str(root.resolve()) for name, root in roots.items()},
    }
    return roots


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_workspaces_with_the_same_paths_stage_into_their_own_folders(
    driver, two_workspaces, scratch
):
    one = driver.run(stage_stage("one"), dry_run=False)
    two = driver.run(stage_stage("two"), dry_run=False)

    staging = scratch["staging"]
    assert sorted(p.name for p in staging.iterdir()) == ["one", "two"]
    for name, run in (("one", one), ("two", two)):
        root = two_workspaces[name]
        css = root / "static/css/site.css"
        copy = staging / name / "css" / f"site.{sha(css)[:16]}.css"
        assert copy.read_bytes() == css.read_bytes()
        assert (
            staging / name / "img" / f"logo.{sha(root / 'static/img/logo.svg')[:16]}.svg"
        ).exists()
        # Each workspace's manifests are in its folder and name only its own copies.
        manifests = sorted((staging / name / "_manifests").glob("*.json"))
        assert [f"{name}/_manifests/{m.name}" for m in manifests] == sorted(
            r["manifest"] for r in run.results
        )
        for m in manifests:
            body = json.loads(m.read_text())
            assert body["workspace"] == name
            assert all(a["staged"].startswith(f"{name}/") for a in body["assets"])
        # Nothing the other workspace staged counted as already there (the logo is
        # byte-identical in both).
        assert sum(r["copied"] for r in run.results) == 2
    assert len(tree_snapshot(staging)) == 2 * (2 + 2)  # 2 copies + 2 manifests each


def test_restaging_one_workspace_rewrites_nothing_of_either(driver, two_workspaces, scratch):
    driver.run(stage_stage("one"), dry_run=False)
    driver.run(stage_stage("two"), dry_run=False)
    backdate(scratch["staging"])
    before = tree_snapshot(scratch["staging"])

    again = driver.run(stage_stage("two"), dry_run=False, fence=2)
    dry = driver.run(stage_stage("one"), dry_run=True)

    assert tree_snapshot(scratch["staging"]) == before
    assert sum(r["copied"] for r in again.results) == 0
    assert {a["action"] for r in dry.results for a in r["assets"]} == {"already_staged"}


def test_a_dry_run_of_a_new_workspace_does_not_count_another_workspaces_copies(
    driver, two_workspaces
):
    driver.run(stage_stage("one"), dry_run=False)

    dry = driver.run(stage_stage("two"), dry_run=True)

    assert {a["action"] for r in dry.results for a in r["assets"]} == {"copy"}
    assert all(a["staged_as"].startswith("two/") for r in dry.results for a in r["assets"])


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("demo", True),
        ("web-2.0_assets", True),
        ("..", False),
        (".hidden", False),
        ("a/b", False),
        ("/etc", False),
        ("naïve", False),
        ("", False),
    ],
)
def test_a_workspace_name_becomes_one_safe_folder(name, plain):
    folder = staging_folder(name)

    assert "/" not in folder and folder not in ("", ".", "..")
    assert (folder == name) is plain
    if not plain:
        assert folder == f"ws-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    assert staged_name(name, "static", "static/css/a.css", "f" * 64) == (
        f"{folder}/css/a.{'f' * 16}.css"
    )


def test_a_workspace_named_like_a_path_stages_inside_staging(driver, tmp_path, settings, scratch):
    root = tmp_path / "odd"
    write_files(root, {"static/css/site.css": "body {}\n"})
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "../up": str(root.resolve())}

    run = driver.run(stage_stage("../up"), dry_run=False)

    folder = staging_folder("../up")
    assert [p.name for p in scratch["staging"].iterdir()] == [folder]
    assert all(r["manifest"].startswith(f"{folder}/_manifests/") for r in run.results)
    assert not (scratch["var"] / "up").exists()
