"""assets.index verifies pinned files by stat at apply (runs_app.kinds.files.verify_pinned):
partitioning hashed each file and recorded its stat token (device, inode, size, mtime_ns,
ctime_ns); the apply re-hashes only a file whose stat moved, and opens images only for their
header. What this guarantees, tested here on the demo's real assets: an unchanged file is not
read again; a touched file is hashed again and indexed; a same-size rewrite with its mtime put
back, or a file swapped by a rename, is `workspace_changed` (utime moves ctime, a rename the
inode); a file swapped for an escaping symlink is refused; the tokens never enter the run
digest. What it does not: a rewrite that also puts back ctime (only a change of the system
clock allows it), README "What assets.index reads".
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from blueprints_app.registry import EXECUTORS, FILE_STATS, ComponentError
from runs_app import services
from runs_app.kinds import files
from runs_app.manifest import resolve_manifest
from runs_app.models import AssetIndexEntry

pytestmark = pytest.mark.django_db


def assets_stage(**params):
    return {
        "id": "assets",
        "kind": "assets.index",
        "partitioner": "by_asset_bucket",
        "executor": "index_assets",
        "params": {"workspace": "demo", "root": "assets", **params},
    }


@pytest.fixture
def trusted(monkeypatch):
    """Stat tokens for the demo copy's files, which are milliseconds old: production gives
    none to a file changed within RACY_WINDOW_NS of its hashing (a same-tick write keeps its
    timestamps); tests that change a file after partitioning wait until its ctime moved."""
    monkeypatch.setattr(files, "RACY_WINDOW_NS", 0)


def later_ctime(path: Path, before: os.stat_result, change) -> None:
    """Apply `change` to `path` until its ctime differs from `before`'s (at most a clock tick
    of the file system: a change in the same tick as the hashing is what the window covers)."""
    deadline = time.monotonic() + 5
    while True:
        change(path)
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            return
        assert time.monotonic() < deadline, "the file system's ctime did not move"


def rewrite_same_size_mtime_restored(path: Path) -> None:
    before = path.stat()
    original = path.read_bytes()

    def change(p: Path) -> None:
        p.write_bytes(bytes(b ^ 0x01 for b in original))
        os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))

    later_ctime(path, before, change)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert path.read_bytes() != original


def execute_all(driver, stage, kind, manifest, data):
    return [
        EXECUTORS["index_assets"]().execute(
            driver.context(stage, kind, data, i, spec, dry_run=False)
        )
        for i, spec in enumerate(manifest.partitions)
    ]


def test_pinning_records_a_token_per_file_and_none_for_a_file_younger_than_the_window(
    driver, demo_copy, monkeypatch
):
    stage = assets_stage()
    _kind, _manifest, data = driver.partition(stage)
    assert len(data[FILE_STATS]) == len(data["files"]) > 10
    assert data[FILE_STATS] == [None] * len(data["files"])  # just copied: all too young

    monkeypatch.setattr(files, "RACY_WINDOW_NS", 0)
    _kind, _manifest, data = driver.partition(stage)
    tokens = data[FILE_STATS]
    assert all(isinstance(t, str) and len(t) == 16 for t in tokens)
    for (rel, *_rest), token in zip(data["files"], tokens, strict=True):
        assert token == files.stat_token(os.stat(demo_copy / rel))


def test_an_unchanged_file_is_not_read_again_at_apply(driver, demo_copy, trusted):
    """Its stat vouches for it: the index row takes the pinned hash without a second read
    (here a pinned hash that is not the file's, to show no read happened; in a real manifest
    the two are the same, as the other tests check)."""
    stage = assets_stage(buckets=["styles", "fonts"])
    kind, manifest, data = driver.partition(stage)
    rel = data["files"][0][0]
    data["files"][0][2] = "0" * 64

    execute_all(driver, stage, kind, manifest, data)

    assert AssetIndexEntry.objects.get(path=rel).sha256 == "0" * 64
    assert AssetIndexEntry.objects.count() == len(data["files"])


def test_every_row_has_the_files_real_hash_and_images_their_size(driver, demo_copy, trusted):
    stage = assets_stage()
    kind, manifest, data = driver.partition(stage)
    assert None not in data[FILE_STATS]

    execute_all(driver, stage, kind, manifest, data)

    rows = {e.path: e for e in AssetIndexEntry.objects.all()}
    assert set(rows) == {r[0] for r in data["files"]}
    for path, entry in rows.items():
        assert entry.sha256 == hashlib.sha256((demo_copy / path).read_bytes()).hexdigest()
    assert (rows["assets/images/logo.png"].width, rows["assets/images/logo.png"].height) == (64, 64)
    assert rows["assets/images/hero.jpg"].height == 96


@pytest.mark.parametrize("bucket", ["styles", "images"])
def test_a_touched_file_is_hashed_again_and_indexed(driver, demo_copy, trusted, bucket):
    stage = assets_stage(buckets=[bucket])
    kind, manifest, data = driver.partition(stage)
    target = demo_copy / data["files"][0][0]
    later_ctime(target, target.stat(), lambda p: os.utime(p))

    execute_all(driver, stage, kind, manifest, data)

    entry = AssetIndexEntry.objects.get(path=data["files"][0][0])
    assert entry.sha256 == hashlib.sha256(target.read_bytes()).hexdigest() == data["files"][0][2]


@pytest.mark.parametrize("bucket", ["styles", "images"])
def test_a_same_size_rewrite_with_its_mtime_restored_is_seen_by_its_ctime(
    driver, demo_copy, trusted, bucket
):
    stage = assets_stage(buckets=[bucket])
    kind, manifest, data = driver.partition(stage)
    rewrite_same_size_mtime_restored(demo_copy / data["files"][-1][0])

    with pytest.raises(ComponentError) as info:
        execute_all(driver, stage, kind, manifest, data)

    assert info.value.code == "workspace_changed"
    assert AssetIndexEntry.objects.count() == 0


def test_a_file_swapped_by_a_rename_with_its_mtime_restored_is_seen_by_its_inode(
    driver, demo_copy, trusted
):
    stage = assets_stage(buckets=["scripts"])
    kind, manifest, data = driver.partition(stage)
    target = demo_copy / data["files"][0][0]
    before = target.stat()
    swap = target.with_name("swap.tmp")
    swap.write_bytes(bytes(b ^ 0x01 for b in target.read_bytes()))
    os.utime(swap, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(swap, target)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )

    with pytest.raises(ComponentError) as info:
        execute_all(driver, stage, kind, manifest, data)

    assert info.value.code == "workspace_changed"


@pytest.mark.parametrize("bucket", ["styles", "images"])
def test_a_file_swapped_for_an_escaping_symlink_is_refused(
    driver, demo_copy, trusted, tmp_path, bucket
):
    stage = assets_stage(buckets=[bucket])
    kind, manifest, data = driver.partition(stage)
    target = demo_copy / data["files"][0][0]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)

    with pytest.raises(ComponentError) as info:
        execute_all(driver, stage, kind, manifest, data)

    assert info.value.code == "path_escape"
    assert AssetIndexEntry.objects.count() == 0


def test_a_manifest_without_tokens_hashes_every_file(driver, demo_copy, trusted):
    stage = assets_stage(buckets=["styles"])
    kind, manifest, data = driver.partition(stage)
    del data[FILE_STATS]  # a manifest stored before tokens existed
    rewrite_same_size_mtime_restored(demo_copy / data["files"][0][0])

    with pytest.raises(ComponentError) as info:
        execute_all(driver, stage, kind, manifest, data)

    assert info.value.code == "workspace_changed"


def test_stat_tokens_stay_out_of_the_run_digest(demo_copy, trusted, operator):
    """A file touched between a dry-run and its apply keeps the digest (the approval holds);
    a file whose bytes changed does not."""
    plan = services.plan_create(
        actor=operator, document={"name": "a", "stages": [assets_stage(buckets=["styles"])]}
    )
    first = resolve_manifest(plan.latest_revision)
    target = demo_copy / first.stages[0].data["files"][0][0]
    later_ctime(target, target.stat(), lambda p: os.utime(p))

    touched = resolve_manifest(plan.latest_revision)

    assert touched.stages[0].data[FILE_STATS] != first.stages[0].data[FILE_STATS]
    assert touched.digest == first.digest
    target.write_bytes(target.read_bytes() + b"/* changed */")
    assert resolve_manifest(plan.latest_revision).digest != first.digest
