"""assets.index and assets.stage: by_asset_bucket, by_filesize and index_assets on the demo's
real images, styles, scripts, fonts and sounds (copied into tmp_path)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from runs_app.kinds.assets import BUCKET_NAMES, image_size, staged_name
from runs_app.models import AssetIndexEntry
from runs_app.search import search_assets
from tests.runs_app.kinds.conftest import backdate, tree_snapshot

pytestmark = pytest.mark.django_db


def assets_stage(kind: str = "assets.index", partitioner: str = "by_asset_bucket", **params):
    return {
        "id": "assets",
        "kind": kind,
        "partitioner": partitioner,
        "executor": "index_assets",
        "params": {"workspace": "demo", "root": "assets", **params},
    }


def demo_assets(root: Path) -> list[Path]:
    return sorted(p for p in (root / "assets").rglob("*") if p.is_file())


def test_by_asset_bucket_makes_one_partition_per_non_empty_bucket(driver, demo_copy):
    _kind, manifest, data = driver.partition(assets_stage())

    assert [p.inputs["bucket"] for p in manifest.partitions] == BUCKET_NAMES
    files = data["files"]
    assert len(files) == len(demo_assets(demo_copy))
    by_bucket = {
        p.inputs["bucket"]: [
            f[0] for f in files[p.inputs["file_range_start"] : p.inputs["file_range_end"]]
        ]
        for p in manifest.partitions
    }
    assert "assets/images/logo.png" in by_bucket["images"]
    assert "assets/fonts/shopfront-sans.woff" in by_bucket["fonts"]
    assert "assets/media/order-placed.wav" in by_bucket["media"]
    assert "assets/styles/site.css" in by_bucket["styles"]
    assert "assets/scripts/cart.js" in by_bucket["scripts"]
    assert "assets/other/robots.txt" in by_bucket["other"]


def test_image_dimensions_come_from_png_gif_and_jpeg_headers():
    assert image_size(
        (Path(__file__).parents[3] / "examples/workspace/assets/images/logo.png").read_bytes()
    ) == (64, 64)
    images = Path(__file__).parents[3] / "examples/workspace/assets/images"
    assert image_size((images / "spinner.gif").read_bytes()) == (24, 24)
    assert image_size((images / "hero.jpg").read_bytes()) == (160, 96)
    assert image_size(b"not an image") is None


def test_indexing_records_path_size_hash_media_type_and_dimensions(driver, demo_copy):
    run = driver.run(assets_stage(), dry_run=False)

    files = demo_assets(demo_copy)
    assert (
        sum(r["assets_indexed"] for r in run.results)
        == len(files)
        == AssetIndexEntry.objects.count()
    )
    for path in files:
        entry = AssetIndexEntry.objects.get(workspace="demo", path=str(path.relative_to(demo_copy)))
        assert entry.size == path.stat().st_size
        assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    logo = AssetIndexEntry.objects.get(path="assets/images/logo.png")
    assert (logo.media_type, logo.width, logo.height, logo.bucket) == (
        "image/png",
        64,
        64,
        "images",
    )
    hero = AssetIndexEntry.objects.get(path="assets/images/hero.jpg")
    assert (hero.media_type, hero.width, hero.height) == ("image/jpeg", 160, 96)
    spinner = AssetIndexEntry.objects.get(path="assets/images/spinner.gif")
    assert (spinner.width, spinner.height) == (24, 24)
    font = AssetIndexEntry.objects.get(path="assets/fonts/shopfront-sans.woff")
    assert (font.media_type, font.width) == ("font/woff", None)
    assert AssetIndexEntry.objects.get(path="assets/media/error.wav").media_type == "audio/wav"


def test_indexing_twice_upserts_by_path_and_prunes_files_that_are_gone(driver, demo_copy):
    driver.run(assets_stage(), dry_run=False)
    count = AssetIndexEntry.objects.count()
    ids = dict(AssetIndexEntry.objects.values_list("path", "id"))
    (demo_copy / "assets/images/pattern.gif").unlink()

    run = driver.run(assets_stage(), dry_run=False)

    assert AssetIndexEntry.objects.count() == count - 1
    assert not AssetIndexEntry.objects.filter(path="assets/images/pattern.gif").exists()
    assert dict(AssetIndexEntry.objects.values_list("path", "id")).items() <= ids.items()
    assert sum(r["removed"] for r in run.results) == 1


def test_an_index_dry_run_reports_and_leaves_no_index_entry(driver, demo_copy, scratch):
    run = driver.run(assets_stage(), dry_run=True)

    assert sum(r["assets_count"] for r in run.results) == len(demo_assets(demo_copy))
    assert {a["action"] for r in run.results for a in r["assets"]} == {"add"}
    assert AssetIndexEntry.objects.count() == 0
    assert tree_snapshot(scratch["var"]) == {}


def test_by_filesize_serves_assets_index_too(driver, demo_copy):
    run = driver.run(assets_stage(partitioner="by_filesize", max_files=5), dry_run=False)

    assert len(run.results) >= 4
    assert [r["bucket"] for r in run.results] == [f"chunk-{i:04d}" for i in range(len(run.results))]
    assert AssetIndexEntry.objects.count() == len(demo_assets(demo_copy))
    # Buckets recorded per file by type, whatever the partition was called.
    assert AssetIndexEntry.objects.get(path="assets/images/logo.png").bucket == "images"


def test_staging_copies_assets_under_content_hashed_names_with_a_manifest(
    driver, demo_copy, scratch
):
    run = driver.run(assets_stage("assets.stage"), dry_run=False)

    staged = scratch["staging"]
    for path in demo_assets(demo_copy):
        rel = str(path.relative_to(demo_copy))
        name = staged_name("demo", "assets", rel, hashlib.sha256(path.read_bytes()).hexdigest())
        assert (staged / name).read_bytes() == path.read_bytes()
    logo_sha = hashlib.sha256((demo_copy / "assets/images/logo.png").read_bytes()).hexdigest()
    assert (staged / f"demo/images/logo.{logo_sha[:16]}.png").exists()
    for out in run.results:
        manifest = json.loads((staged / out["manifest"]).read_text())
        assert manifest["bucket"] == out["bucket"]
        assert len(manifest["assets"]) == out["assets_staged"]
        assert (
            hashlib.sha256((staged / out["manifest"]).read_bytes()).hexdigest()[:16]
            in out["manifest"]
        )
    assert sum(r["assets_staged"] for r in run.results) == len(demo_assets(demo_copy))


def test_staging_twice_rewrites_nothing(driver, demo_copy, scratch):
    driver.run(assets_stage("assets.stage"), dry_run=False)
    backdate(scratch["staging"])
    before = tree_snapshot(scratch["staging"])

    again = driver.run(assets_stage("assets.stage"), dry_run=False, fence=2)

    assert tree_snapshot(scratch["staging"]) == before
    assert sum(r["copied"] for r in again.results) == 0


def test_a_stage_dry_run_reports_copies_and_writes_no_file(driver, demo_copy, scratch):
    run = driver.run(assets_stage("assets.stage", partitioner="by_filesize"), dry_run=True)

    assert sum(r["assets_count"] for r in run.results) == len(demo_assets(demo_copy))
    assert all(a["action"] == "copy" for r in run.results for a in r["assets"])
    assert tree_snapshot(scratch["var"]) == {}


def test_search_finds_indexed_assets_by_name_ranked_by_where_words_match(driver, demo_copy):
    driver.run(assets_stage(), dry_run=False)

    hits = search_assets("logo")

    assert [h["path"] for h in hits][:2] == [
        "assets/images/logo.png",
        "assets/images/brand-logo@2x.png",
    ]
    assert hits[0]["snippet_html"] == "assets/images/<mark>logo</mark>.png"
    assert hits[0]["width"] == 64
    assert [h["path"] for h in search_assets("wav")] == [
        "assets/media/error.wav",
        "assets/media/order-placed.wav",
    ]
    assert search_assets("nothing-like-this") == []


def test_staging_a_file_changed_since_partitioning_fails_and_leaves_no_copy(
    driver, demo_copy, scratch
):
    from blueprints_app.registry import EXECUTORS, ComponentError

    stage = assets_stage("assets.stage", buckets=["media"])
    kind, manifest, data = driver.partition(stage)
    with (demo_copy / "assets/media/error.wav").open("ab") as f:
        f.write(b"\x00\x00")
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["index_assets"]().execute(ctx)

    assert info.value.code == "workspace_changed"
    assert not [k for k in tree_snapshot(scratch["staging"]) if "error" in k or ".tmp-" in k]
    assert not [k for k in tree_snapshot(scratch["staging"]) if "_manifests" in k]


def test_indexing_a_same_size_rewrite_with_its_mtime_restored_fails_and_writes_no_row(
    driver, demo_copy
):
    """The apply reads each pinned file and checks its SHA-256: a file rewritten after
    partitioning with the same size and its mtime put back (what a size + mtime shortcut
    would trust) still fails the partition, and no index row is written."""
    from blueprints_app.registry import EXECUTORS, ComponentError

    stage = assets_stage(buckets=["styles"])
    kind, manifest, data = driver.partition(stage)
    target = next(p for p in demo_assets(demo_copy) if p.suffix == ".css")
    before = target.stat()
    original = target.read_bytes()
    target.write_bytes(bytes(b ^ 0x20 if 0x61 <= b <= 0x7A else b for b in original))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert target.read_bytes() != original
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["index_assets"]().execute(ctx)

    assert info.value.code == "workspace_changed"
    assert AssetIndexEntry.objects.count() == 0
