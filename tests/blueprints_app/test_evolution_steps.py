"""Declared migration steps (blueprints_app.evolution): checking, applying, and walking a plan
document from the versions it pins to the current ones."""

from __future__ import annotations

import copy

import pytest

from blueprints_app.evolution import (
    CODE_MIGRATIONS,
    apply_step,
    check_steps,
    migrate_document,
    register_migration,
    register_stage_function,
    register_transform,
)
from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.services import job_kind_save, job_kind_version_update
from hxo_site import codes

STAGE = {
    "id": "pack",
    "kind": "deploy.pack",
    "partitioner": "by_filesize",
    "executor": "pack_backend",
    "params": {"chunk_mb": 2, "bucket": "img"},
    "depends_on": [],
}


@register_transform("mib_to_kib")
def mib_to_kib(value: int) -> int:
    return value * 1024


@register_stage_function("tag_stage")
def tag_stage(stage: dict) -> dict:
    return {**stage, "id": stage["id"] + "-v2"}


def applied(step: dict, stage: dict | None = None) -> tuple[dict, list[str]]:
    stage = copy.deepcopy(stage or STAGE)
    changes = apply_step(step, stage)
    return stage, [c.message for c in changes]


@pytest.mark.parametrize(
    ("step", "field", "value", "message"),
    [
        (
            {"op": "rename_partitioner", "from": "by_filesize", "to": "by_size"},
            "partitioner",
            "by_size",
            "partitioner by_filesize → by_size",
        ),
        (
            {"op": "rename_executor", "from": "pack_backend", "to": "pack"},
            "executor",
            "pack",
            "executor pack_backend → pack",
        ),
        (
            {"op": "rename_param", "from": "chunk_mb", "to": "chunk_size_mb"},
            "params",
            {"chunk_size_mb": 2, "bucket": "img"},
            "param chunk_mb → chunk_size_mb",
        ),
        (
            {"op": "set_param", "name": "root", "value": "."},
            "params",
            {"chunk_mb": 2, "bucket": "img", "root": "."},
            "param root set to '.'",
        ),
        (
            {"op": "remove_param", "name": "bucket"},
            "params",
            {"chunk_mb": 2},
            "param bucket removed",
        ),
        (
            {"op": "map_param", "name": "bucket", "values": {"img": "images"}},
            "params",
            {"chunk_mb": 2, "bucket": "images"},
            "param bucket: 'img' → 'images'",
        ),
        (
            {"op": "transform_param", "name": "chunk_mb", "function": "mib_to_kib"},
            "params",
            {"chunk_mb": 2048, "bucket": "img"},
            "param chunk_mb: 2 → 2048",
        ),
        ({"op": "call", "function": "tag_stage"}, "id", "pack-v2", "rewritten by tag_stage"),
        (
            {"op": "move_to_kind", "kind": "assets.index", "executors": {"pack_backend": "x"}},
            "kind",
            "assets.index",
            "moved from deploy.pack to assets.index",
        ),
    ],
)
def test_each_op_rewrites_the_stage_and_says_what_it_did(step, field, value, message):
    stage, messages = applied(step)

    assert stage[field] == value
    assert messages[0] == message
    assert check_steps([step], check_kinds=False) == []


def test_a_step_that_does_not_apply_changes_nothing():
    for step in (
        {"op": "rename_partitioner", "from": "by_module", "to": "x"},
        {"op": "rename_param", "from": "missing", "to": "x"},
        {"op": "set_param", "name": "chunk_mb", "value": 9},
        {"op": "map_param", "name": "bucket", "values": {"css": "styles"}},
        {"op": "rename_param", "from": "chunk_mb", "to": "x", "partitioner": "by_module"},
    ):
        stage, messages = applied(step)
        assert stage == STAGE and messages == []


def test_a_move_renames_components_by_its_maps():
    stage, messages = applied(
        {"op": "move_to_kind", "kind": "assets.index", "executors": {"pack_backend": "idx"}}
    )

    assert (stage["kind"], stage["executor"]) == ("assets.index", "idx")
    assert messages == ["moved from deploy.pack to assets.index", "executor pack_backend → idx"]


@pytest.mark.parametrize(
    ("steps", "path"),
    [
        ("nope", "m"),
        ([1], "m[0]"),
        ([{"op": "explode"}], "m[0].op"),
        ([{"op": "rename_param", "from": "a"}], "m[0].to"),
        ([{"op": "rename_param", "from": "a", "to": "b", "extra": 1}], "m[0].extra"),
        ([{"op": "rename_param", "from": "a", "to": 3}], "m[0].to"),
        ([{"op": "set_param", "name": "a"}], "m[0].value"),
        ([{"op": "map_param", "name": "a", "values": []}], "m[0].values"),
        ([{"op": "transform_param", "name": "a", "function": "nope"}], "m[0].function"),
        ([{"op": "call", "function": "nope"}], "m[0].function"),
        ([{"op": "move_to_kind", "kind": "deploy.pack"}], "m[0].kind"),
        ([{"op": "move_to_kind", "kind": "x.y", "version": 0}], "m[0].version"),
        (
            [{"op": "rename_executor", "from": "a", "to": "b", "partitioner": ""}],
            "m[0].partitioner",
        ),
    ],
)
def test_malformed_steps_are_reported_with_a_path(steps, path):
    problems = check_steps(steps, kind="deploy.pack", path="m", check_kinds=False)

    assert path in [p.path for p in problems]
    assert {p.code for p in problems} == {codes.INVALID_MIGRATION}


def test_a_malformed_code_migration_fails_when_it_is_declared():
    with pytest.raises(ValueError, match="unknown op"):
        register_migration("deploy.pack", 1, [{"op": "explode"}])
    assert ("deploy.pack", 1) not in CODE_MIGRATIONS


# --- Whole documents ------------------------------------------------------------------------


@pytest.fixture
def pack_v3(db):
    """deploy.pack v2 renamed nothing (a new SLO); v3 allows only by_module, and the way there
    is declared on v2: renames, then a default for the new partitioner's root."""
    row = JobKind.objects.get(kind="deploy.pack")
    row.default_slo_ms = 1000
    job_kind_save(job_kind=row)
    row.partitioners = ["by_module"]
    job_kind_save(job_kind=row)
    job_kind_version_update(
        row=JobKindVersion.objects.get(kind="deploy.pack", version=2),
        migration=[
            {"op": "rename_partitioner", "from": "by_filesize", "to": "by_module"},
            {"op": "remove_param", "name": "chunk_size_mb"},
        ],
    )
    return row


def plan(**params):
    return {
        "name": "p",
        "stages": [
            {
                "id": "pack",
                "kind": "deploy.pack",
                "partitioner": "by_filesize",
                "executor": "pack_backend",
                "params": params,
                "depends_on": [],
            }
        ],
    }


def test_a_document_walks_every_version_from_its_pin(pack_v3):
    result = migrate_document(plan(chunk_size_mb=2), {"deploy.pack": 1})

    assert result.valid, result.result.errors
    assert result.document["stages"][0]["partitioner"] == "by_module"
    assert result.document["stages"][0]["params"] == {}
    assert result.kind_versions == {"deploy.pack": 3}
    assert [c.op for c in result.changes] == ["rename_partitioner", "remove_param", "version"]


def test_a_document_at_the_current_version_is_unchanged(pack_v3):
    doc = {**plan(), "stages": [{**plan()["stages"][0], "partitioner": "by_module"}]}

    result = migrate_document(doc, {"deploy.pack": 3})

    assert not result.changed
    assert result.document == doc


def test_steps_for_the_current_version_wait_unless_they_move_the_stage(db):
    job_kind_version_update(
        row=JobKindVersion.objects.get(kind="deploy.pack", version=1),
        migration=[{"op": "set_param", "name": "root", "value": "."}],
    )

    result = migrate_document(plan(), {"deploy.pack": 1})

    assert not result.changed


def test_moves_that_loop_are_reported(db):
    for kind, target in (("deploy.pack", "deploy.prime"), ("deploy.prime", "deploy.pack")):
        job_kind_version_update(
            row=JobKindVersion.objects.get(kind=kind, version=1),
            migration=[{"op": "move_to_kind", "kind": target}],
        )

    result = migrate_document(plan(), {"deploy.pack": 1})

    assert not result.valid
    assert result.result.errors[0].code == codes.MIGRATION_FAILED
