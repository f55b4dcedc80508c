"""assets.index and assets.stage on real packages, through the engine.

The rows in the asset index are `find` of the tree (path, size, SHA-256), with the media type
of each suffix and the pixel size of each PNG/JPEG (pinned below, measured with Pillow 12.3);
staged copies are every file of the tree under its content-hashed name, byte for byte, and
the partitions' manifests list them all. Dry-runs write no row and no copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runs_app.kinds.assets import staged_name, staging_folder
from runs_app.models import AssetIndexEntry
from tests.realmaterial.conftest import outputs_of, plan_of, previews_of, stage
from tests.realmaterial.material import find_files
from tests.runs_app.kinds.conftest import tree_snapshot

pytestmark = [pytest.mark.real_material, pytest.mark.django_db(transaction=True)]

# (width, height) of click's raster images, measured with Pillow.
CLICK_PIXELS = {
    "docs/_static/click-icon.png": (64, 64),
    "docs/_static/click-logo-sidebar.png": (240, 100),
    "docs/_static/click-logo.png": (840, 350),
    "examples/imagepipe/example01.jpg": (720, 440),
    "examples/imagepipe/example02.jpg": (720, 440),
}


def found_rows(root: Path) -> set[tuple[str, int, str]]:
    """(path, size, SHA-256) of every file under root: what the index must hold."""
    rows = set()
    for rel in find_files(root):
        data = (root / rel).read_bytes()
        rows.add((rel, len(data), hashlib.sha256(data).hexdigest()))
    return rows


def index_rows(workspace: str) -> set[tuple[str, int, str]]:
    return set(
        AssetIndexEntry.objects.filter(workspace=workspace).values_list("path", "size", "sha256")
    )


@pytest.mark.parametrize(
    ("name", "partitioner", "params"),
    [
        ("bootstrap", "by_asset_bucket", {}),
        ("click", "by_filesize", {"chunk_size_mb": 1, "max_files": 50}),
        ("bootstrap-icons", "by_filesize", {"chunk_size_mb": 4, "max_files": 1000}),
        # The trees `make bench` times (bench/real.py), with the bench's params.
        ("fontawesome", "by_filesize", {"chunk_size_mb": 8}),
        ("django", "by_filesize", {"chunk_size_mb": 8}),
    ],
)
def test_the_asset_index_holds_every_file_of_the_tree(
    workspace_of, scratch, engine, name, partitioner, params
):
    root = workspace_of(name)
    document = plan_of(
        f"index-{name}",
        stage("assets.index", partitioner, "index_assets", workspace=name, root=".", **params),
    )

    def nothing_written() -> None:
        assert AssetIndexEntry.objects.count() == 0

    dry, run = engine.run(document, unchanged=nothing_written)

    expected = found_rows(root)
    assert index_rows(name) == expected
    assert sum(o["assets_indexed"] for o in outputs_of(run)) == len(expected)
    assert sum(p["assets_count"] for p in previews_of(dry)) == len(expected)
    types = dict(AssetIndexEntry.objects.filter(workspace=name).values_list("path", "media_type"))
    suffix_types = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
    suffix_types |= {".scss": "text/x-scss", ".map": "application/json", ".svg": "image/svg+xml"}
    suffix_types |= {".woff2": "font/woff2", ".json": "application/json", ".jpg": "image/jpeg"}
    checked = 0
    for path, media in types.items():
        suffix = Path(path).suffix
        if suffix in suffix_types:
            assert media == suffix_types[suffix], path
            checked += 1
    assert checked >= 5  # each tree has files of several of these suffixes


def test_png_and_jpeg_sizes_are_measured(workspace_of, scratch, engine):
    workspace_of("click")
    document = plan_of(
        "index-click-images",
        stage(
            "assets.index",
            "by_asset_bucket",
            "index_assets",
            workspace="click",
            root=".",
            buckets=["images"],
        ),
    )
    engine.run(document)

    measured = {
        path: (w, h)
        for path, w, h in AssetIndexEntry.objects.filter(workspace="click").values_list(
            "path", "width", "height"
        )
        if not path.endswith(".svg")
    }
    assert measured == CLICK_PIXELS


def test_svg_sizes_are_measured(workspace_of, scratch, engine):
    """Every Bootstrap icon says width="16" height="16" (and viewBox="0 0 16 16")."""
    root = workspace_of("bootstrap-icons")
    document = plan_of(
        "index-icons",
        stage(
            "assets.index",
            "by_asset_bucket",
            "index_assets",
            workspace="bootstrap-icons",
            root="icons",
            buckets=["images"],
        ),
    )
    engine.run(document)

    sizes = dict(
        (path, (w, h))
        for path, w, h in AssetIndexEntry.objects.filter(workspace="bootstrap-icons").values_list(
            "path", "width", "height"
        )
    )
    assert len(sizes) == len(find_files(root / "icons")) == 2050
    assert set(sizes.values()) == {(16, 16)}


@pytest.mark.parametrize(
    ("name", "partitioner"),
    [("bootstrap", "by_filesize"), ("bootstrap", "by_asset_bucket"), ("click", "by_filesize")],
)
def test_staged_copies_are_every_file_of_the_tree(workspace_of, scratch, engine, name, partitioner):
    root = workspace_of(name)
    params = {"chunk_size_mb": 1} if partitioner == "by_filesize" else {}
    document = plan_of(
        f"stage-{name}",
        stage("assets.stage", partitioner, "index_assets", workspace=name, root=".", **params),
    )

    def nothing_written() -> None:
        assert tree_snapshot(scratch["staging"]) == {}

    _dry, run = engine.run(document, unchanged=nothing_written)

    expected = found_rows(root)
    staging = scratch["staging"]
    # Copies live in the workspace's own folder (staging_folder), manifests beside them.
    folder = staging_folder(name)
    copies = {p for p in tree_snapshot(staging) if not p.startswith(f"{folder}/_manifests/")}
    assert copies == {staged_name(name, ".", rel, sha) for rel, _size, sha in expected}
    for rel, size, sha in expected:
        data = (staging / staged_name(name, ".", rel, sha)).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha, rel
    listed = set()
    for out in outputs_of(run):
        manifest = json.loads((staging / out["manifest"]).read_bytes())
        listed |= {(a["source"], a["size"], a["sha256"]) for a in manifest["assets"]}
    assert listed == expected
