"""deploy.pack on real trees: the files inside the archives are the files of the tree.

by_filesize over the whole click sdist and the bootstrap npm package, by_module over the
requests sdist's `src/`: the union of the archives' members is `find` of the tree (none of
these trees holds a default exclude: caches, VCS metadata), each member's bytes are the file's,
no file is in two archives, and the dry-run wrote nothing.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.realmaterial.conftest import inputs_of, outputs_of, plan_of, previews_of, stage
from tests.realmaterial.material import find_files
from tests.runs_app.kinds.conftest import tree_snapshot

pytestmark = [pytest.mark.real_material, pytest.mark.django_db(transaction=True)]


def archive_members(artifacts: Path, outputs: list[dict[str, Any]]) -> dict[str, str]:
    """Member path → SHA-256 of its bytes, over every partition's archive; a path packed
    twice fails."""
    members: dict[str, str] = {}
    for out in outputs:
        with tarfile.open(artifacts / out["archive"]) as tar:
            for info in tar:
                assert info.isfile(), info.name
                assert info.name not in members, f"{info.name} is in two archives"
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                members[info.name] = hashlib.sha256(data).hexdigest()
    return members


def file_hashes(root: Path, under: str = ".") -> dict[str, str]:
    base = root / under
    return {
        (rel if under == "." else f"{under}/{rel}"): hashlib.sha256(
            (base / rel).read_bytes()
        ).hexdigest()
        for rel in find_files(base)
    }


@pytest.mark.parametrize(
    ("name", "chunk_mb", "max_files"),
    # django: the sdist `make bench` times (bench/real.py), 6,869 files in 4 MiB chunks.
    [("click", 1, 40), ("bootstrap", 1, 1000), ("django", 4, 1000)],
)
def test_by_filesize_archives_hold_every_file_of_the_tree(
    workspace_of, scratch, engine, name, chunk_mb, max_files
):
    root = workspace_of(name)
    document = plan_of(
        f"pack-{name}",
        stage(
            "deploy.pack",
            "by_filesize",
            "pack_backend",
            workspace=name,
            root=".",
            chunk_size_mb=chunk_mb,
            max_files=max_files,
        ),
    )

    def nothing_written() -> None:
        assert tree_snapshot(scratch["artifacts"]) == {}

    dry, run = engine.run(document, unchanged=nothing_written)

    expected = file_hashes(root)
    outputs = outputs_of(run)
    assert len(outputs) > 1  # the tree really was split
    assert archive_members(scratch["artifacts"], outputs) == expected
    assert sum(o["files_processed"] for o in outputs) == len(expected)
    assert sum(p["files_count"] for p in previews_of(dry)) == len(expected)
    # Each archive is where its output says, with the digest it says.
    for out in outputs:
        data = (scratch["artifacts"] / out["archive"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == out["digest"]
        assert len(data) == out["bytes"]


def test_by_module_archives_hold_every_file_of_the_src_tree(workspace_of, scratch, engine):
    root = workspace_of("requests")
    document = plan_of(
        "pack-requests",
        stage("deploy.pack", "by_module", "pack_backend", workspace="requests", root="src"),
    )

    def nothing_written() -> None:
        assert tree_snapshot(scratch["artifacts"]) == {}

    _dry, run = engine.run(document, unchanged=nothing_written)

    expected = file_hashes(root, "src")
    assert "src/requests/sessions.py" in expected and "src/requests.egg-info/PKG-INFO" in expected
    outputs = outputs_of(run)
    assert archive_members(scratch["artifacts"], outputs) == expected
    # One partition per top-level folder of src/: the package and its egg-info.
    assert sorted(i["module"] for i in inputs_of(run)) == ["requests", "requests.egg-info"]
