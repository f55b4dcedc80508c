"""deploy.pack: by_filesize, by_module and pack_backend on real files."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import tarfile
import time
from pathlib import Path

import pytest

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, ComponentError, LeaseLost
from tests.runs_app.kinds.conftest import (
    backdate,
    schema_problems,
    tree_snapshot,
    write_files,
)

pytestmark = pytest.mark.django_db


def pack_stage(partitioner: str = "by_filesize", **params: object) -> dict:
    return {
        "id": "pack",
        "kind": "deploy.pack",
        "partitioner": partitioner,
        "executor": "pack_backend",
        "params": {"workspace": "t", "root": "app", **params},
    }


def archive_members(path: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}


def test_by_filesize_bins_the_sorted_file_list_and_pins_it(driver, workspace):
    write_files(workspace, {f"app/data/blob{i}.bin": os.urandom(400_000) for i in range(5)})

    _kind, manifest, data = driver.partition(pack_stage(chunk_size_mb=1))

    files = data["files"]
    assert [f[0] for f in files] == sorted(f[0] for f in files)
    assert all(f[0].startswith("app/") for f in files)
    ranges = [
        (p.inputs["file_range_start"], p.inputs["file_range_end"]) for p in manifest.partitions
    ]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(files)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for p in manifest.partitions:
        size = sum(f[1] for f in files[p.inputs["file_range_start"] : p.inputs["file_range_end"]])
        count = p.inputs["file_range_end"] - p.inputs["file_range_start"]
        assert size <= 1024 * 1024 or count == 1
        assert p.weight == size
        assert set(p.fingerprints) == {
            f[0] for f in files[p.inputs["file_range_start"] : p.inputs["file_range_end"]]
        }
    assert len(manifest.partitions) >= 2


def test_by_filesize_inputs_are_valid_for_every_kind_that_may_use_it(driver, workspace):
    for kind_name in ("deploy.pack", "assets.index", "assets.stage"):
        stage = {**pack_stage(), "kind": kind_name}
        kind, manifest, _data = driver.partition(stage)
        for p in manifest.partitions:
            assert schema_problems(kind.input_schema, p.inputs) == []
            assert p.inputs["stage_kind"] == kind_name


def test_by_module_makes_one_partition_per_top_level_package(driver, workspace):
    _kind, manifest, data = driver.partition(pack_stage("by_module"))

    modules = [p.inputs["module"] for p in manifest.partitions]
    assert modules == ["app", "app.models", "app.services", "app.static"]
    files = data["files"]
    covered = [
        f[0]
        for p in manifest.partitions
        for f in files[p.inputs["file_range_start"] : p.inputs["file_range_end"]]
    ]
    assert sorted(covered) == sorted(f[0] for f in files)
    services = manifest.partitions[modules.index("app.services")]
    assert set(services.fingerprints) == {"app/services/__init__.py", "app/services/cart.py"}


def test_archives_reopen_and_match_the_source_files_byte_for_byte(driver, workspace, scratch):
    write_files(workspace, {"app/bin/run.sh": "#!/bin/sh\necho hi\n"})
    os.chmod(workspace / "app/bin/run.sh", 0o755)

    run = driver.run(pack_stage(max_files=3), dry_run=False)

    seen = {}
    for out in run.results:
        path = scratch["artifacts"] / out["archive"]
        assert path.name == f"{out['digest']}.tar.gz"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == out["digest"]
        assert out["bytes"] == path.stat().st_size
        members = archive_members(path)
        assert out["files_processed"] == len(members)
        names = list(members)
        assert names == sorted(names)
        for name, (info, content) in members.items():
            assert content == (workspace / name).read_bytes()
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
            assert info.mode == (0o755 if name == "app/bin/run.sh" else 0o644)
            seen[name] = content
        # The gzip header carries neither a time nor a file name.
        header = path.read_bytes()[:10]
        assert header[4:8] == b"\x00\x00\x00\x00"
        assert header[3] & 0x08 == 0
    source = sorted(
        str(p.relative_to(workspace)) for p in (workspace / "app").rglob("*") if p.is_file()
    )
    assert sorted(seen) == source


def tarfile_bytes(workspace: Path, names: list[str]) -> bytes:
    """The uncompressed tar tarfile writes for `names` normalised as deploy.pack pins them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = workspace / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def test_archives_hold_the_bytes_tarfile_writes_for_odd_names_and_sizes(driver, workspace, scratch):
    """pack_backend writes ustar headers itself for plain members and asks tarfile for the
    rest (pax records): the tar inside every archive is exactly tarfile's, byte for byte."""
    long_dir = "app/" + "/".join(["a_rather_long_directory_name"] * 4)
    write_files(
        workspace,
        {
            f"{long_dir}/and_a_long_file_name.py": "x = 1\n",  # > 100 bytes: a pax record
            "app/donn\u00e9es/\u00e9t\u00e9.txt": "\u00e9t\u00e9\n",  # non-ASCII name
            "app/" + "n" * 96: "exactly 100 bytes of name\n",  # ustar's limit itself
            "app/empty.txt": b"",
            "app/block.bin": os.urandom(512),  # no padding
            "app/big.bin": os.urandom((1 << 20) + 3),  # read in two chunks
            "app/bin/run.sh": "#!/bin/sh\necho hi\n",
        },
    )
    os.chmod(workspace / "app/bin/run.sh", 0o755)

    run = driver.run(pack_stage(max_files=4), dry_run=False)

    packed = []
    for out in run.results:
        raw = gzip.decompress((scratch["artifacts"] / out["archive"]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            names = tar.getnames()
        assert raw == tarfile_bytes(workspace, names)
        packed += names
    source = sorted(
        str(p.relative_to(workspace)) for p in (workspace / "app").rglob("*") if p.is_file()
    )
    assert sorted(packed) == source
    assert f"{long_dir}/and_a_long_file_name.py" in packed


@pytest.mark.parametrize(
    "content", [b"def add(a, b):\n", b"def add(a, b):\n    return a + b\n\n\n_HIDDEN = 12\n"]
)
def test_a_file_shorter_or_longer_than_pinned_is_refused(driver, workspace, scratch, content):
    stage = pack_stage()
    kind, manifest, data = driver.partition(stage)
    (workspace / "app/util.py").write_bytes(content)
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["pack_backend"]().execute(ctx)

    assert info.value.code == "workspace_changed"
    assert "app/util.py" in info.value.message
    assert [k for k in tree_snapshot(scratch["artifacts"]) if k.endswith(".tar.gz")] == []


def test_packing_twice_gives_the_same_archives_and_writes_nothing_the_second_time(
    driver, workspace, scratch
):
    first = driver.run(pack_stage(max_files=3), dry_run=False)
    backdate(scratch["artifacts"])  # so that a rewrite would show in mtime_ns
    before = tree_snapshot(scratch["artifacts"])

    second = driver.run(pack_stage(max_files=3), dry_run=False, fence=2)

    assert [r["digest"] for r in second.results] == [r["digest"] for r in first.results]
    assert tree_snapshot(scratch["artifacts"]) == before

    # Without the input pointers the archives are rebuilt, byte-identical, and still not
    # rewritten: same inode, same mtime.
    for pointer in (scratch["artifacts"] / "pack" / "t" / "inputs").iterdir():
        pointer.unlink()
    archives = {k: v for k, v in before.items() if k.endswith(".tar.gz")}
    third = driver.run(pack_stage(max_files=3), dry_run=False, fence=3)
    assert [r["digest"] for r in third.results] == [r["digest"] for r in first.results]
    after = tree_snapshot(scratch["artifacts"])
    assert {k: v for k, v in after.items() if k.endswith(".tar.gz")} == archives
    assert not [k for k in after if ".tmp-" in k]


def test_the_same_files_give_byte_identical_archives_in_another_storage(
    driver, workspace, scratch, settings, tmp_path
):
    first = driver.run(pack_stage(), dry_run=False)
    other = tmp_path / "other-artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(other)},
        },
    }
    # Touch every source file: times must not leak into the archive.
    for path in workspace.rglob("*"):
        if path.is_file():
            os.utime(path, (1_000_000, 1_000_000))

    second = driver.run(pack_stage(), dry_run=False)

    for a, b in zip(first.results, second.results, strict=True):
        assert (scratch["artifacts"] / a["archive"]).read_bytes() == (
            other / b["archive"]
        ).read_bytes()


def test_a_dry_run_lists_files_and_bytes_and_writes_nothing(driver, workspace, scratch):
    run = driver.run(pack_stage(), dry_run=True)

    preview = run.results[0]
    expected = sorted(
        str(p.relative_to(workspace)) for p in (workspace / "app").rglob("*") if p.is_file()
    )
    assert [f["path"] for f in preview["files"]] == expected
    assert preview["bytes"] == sum((workspace / p).stat().st_size for p in expected)
    assert preview["archive_exists"] is False
    assert "would pack" in preview["summary"]
    assert tree_snapshot(scratch["var"]) == {}


def test_a_file_changed_after_partitioning_is_refused_and_leaves_nothing(
    driver, workspace, scratch
):
    stage = pack_stage()
    kind, manifest, data = driver.partition(stage)
    (workspace / "app/util.py").write_text("def add(a, b):\n    return a - b\n")
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["pack_backend"]().execute(ctx)

    assert info.value.code == "workspace_changed"
    assert [k for k in tree_snapshot(scratch["artifacts"]) if k.endswith(".tar.gz")] == []
    assert not [k for k in tree_snapshot(scratch["artifacts"]) if ".tmp-" in k]


def test_a_same_size_rewrite_with_its_mtime_restored_is_still_refused(driver, workspace, scratch):
    """What a stat-based shortcut (size + mtime) would miss: the bytes are what decides."""
    stage = pack_stage()
    kind, manifest, data = driver.partition(stage)
    target = workspace / "app/util.py"
    before = target.stat()
    original = target.read_bytes()
    target.write_bytes(original.replace(b"a + b", b"a - b"))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert target.read_bytes() != original
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["pack_backend"]().execute(ctx)

    assert info.value.code == "workspace_changed"
    assert "app/util.py" in info.value.message
    assert [k for k in tree_snapshot(scratch["artifacts"]) if k.endswith(".tar.gz")] == []


def test_a_lost_lease_stops_packing_and_leaves_no_visible_archive(driver, workspace, scratch):
    stage = pack_stage()
    kind, manifest, data = driver.partition(stage)

    def lost() -> None:
        raise LeaseLost()

    ctx = driver.context(
        stage, kind, data, 0, manifest.partitions[0], dry_run=False, heartbeat=lost
    )
    with pytest.raises(LeaseLost):
        EXECUTORS["pack_backend"]().execute(ctx)

    # Not the archive, not its pointer, not the attempt's temporary file.
    assert tree_snapshot(scratch["artifacts"]) == {}


def test_cleanup_stale_removes_only_old_temporary_files(workspace, scratch):
    pack_dir = scratch["artifacts"] / "pack" / "t"
    pack_dir.mkdir(parents=True)
    old = pack_dir / "archive.tar.gz.tmp-7-1"
    fresh = pack_dir / "archive.tar.gz.tmp-8-1"
    keep = pack_dir / ("0" * 64 + ".tar.gz")
    for path in (old, fresh, keep):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    assert EXECUTORS["pack_backend"]().cleanup_stale() == 1
    assert not old.exists() and fresh.exists() and keep.exists()


def test_an_escaping_symlink_in_the_workspace_is_never_packed(driver, workspace, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the workspace")
    (workspace / "app" / "leak.txt").symlink_to(secret)
    (workspace / "app" / "linked_dir").symlink_to(tmp_path, target_is_directory=True)

    _kind, _manifest, data = driver.partition(pack_stage())

    assert all("leak" not in f[0] and "linked_dir" not in f[0] for f in data["files"])


def test_the_demo_backend_packs_with_every_file_of_it(driver, demo_copy, scratch):
    stage = {
        **pack_stage(max_files=12),
        "params": {"workspace": "demo", "root": "backend", "max_files": 12},
    }

    run = driver.run(stage, dry_run=False)

    packed = {}
    for out in run.results:
        packed.update(archive_members(scratch["artifacts"] / out["archive"]))
    py_files = {str(p.relative_to(demo_copy)) for p in (demo_copy / "backend").rglob("*.py")}
    assert set(packed) == py_files
    assert len(py_files) >= 40
    assert JobKind.objects.get(kind="deploy.pack").result_status == "packed"
    with gzip.open(scratch["artifacts"] / run.results[0]["archive"]) as gz:
        assert gz.read(512)[257:262] == b"ustar"
