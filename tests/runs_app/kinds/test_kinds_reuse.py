"""Reuse happens only for the same work, and only when its effect still exists (issue 11 §2).

Through the engine with the real kinds: an apply reuses an earlier partition only when the
content id matches (same kind, executor, resolved params with every workspace and target by
identity, inputs, fingerprints) and the executor confirms the earlier effect is still there.
Each test counts effects: rows at the target, files in storage, index rows.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.template.loader import render_to_string

from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import selectors, services
from runs_app.models import (
    AssetIndexEntry,
    DocPage,
    Partition,
    PartitionState,
    RegistryEntry,
    Run,
    RunState,
)
from tests.helpers import drain
from tests.runs_app.kinds.conftest import EXAMPLES
from tests.runs_app.kinds.test_kinds_engine import approve_if_needed, errors_of

pytestmark = pytest.mark.django_db(transaction=True)


def apply_through_review(plan: Any, operator: Any, approver: Any) -> Run:
    """Dry-run, approve where the kind asks for it, apply; the apply must succeed."""
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    approve_if_needed(dry, approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    assert run.state == RunState.SUCCEEDED, errors_of(run)
    return run


def states(run: Run) -> dict[str, int]:
    found: dict[str, int] = {}
    for state in Partition.objects.filter(run=run).values_list("state", flat=True):
        found[state] = found.get(state, 0) + 1
    return found


# --- The same plan on another database target --------------------------------------------


ITEMS = 6


def seed_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.executemany("INSERT INTO items VALUES (?, 0)", [(i,) for i in range(1, ITEMS + 1)])
    conn.close()


def seed_pg(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO items SELECT g, 0 FROM generate_series(1, {ITEMS}) g")


def total_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (total,) = conn.execute("SELECT SUM(n) FROM items").fetchone()
    conn.close()
    return int(total)


def total_pg(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT SUM(n) FROM items").fetchone()[0])


MIGRATIONS = {
    # Each form's apply adds this much to SUM(items.n).
    "statements": (
        {
            "statements": [
                "UPDATE items SET n = n + 1 WHERE id <= 3",
                "UPDATE items SET n = n + 10 WHERE id > 3",
            ],
            "batch_size": 1,
        },
        3 * 1 + 3 * 10,
    ),
    "backfill": (
        {
            "backfill": {
                "sql": "UPDATE items SET n = n + 1 WHERE id >= :start AND id < :end",
                "table": "items",
                "key_column": "id",
                "batch_size": 2,
            }
        },
        ITEMS,
    ),
}


@pytest.mark.postgres
@pytest.mark.parametrize("form", sorted(MIGRATIONS))
@pytest.mark.parametrize("switch", ["plan_edited", "name_repointed"])
def test_a_migration_applied_on_sqlite_then_on_postgresql_changes_postgresql(
    form, switch, sqlite_target, pg_target, scratch, settings, operator, approver
):
    settings.HXO_RETRY_BACKOFF_MS = 0
    lite = sqlite_target("lite")
    seed_sqlite(lite)
    seed_pg(pg_target)
    params, delta = MIGRATIONS[form]
    stage = {
        "id": "migrate",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": "lite", **params},
    }
    plan = services.plan_create(actor=operator, document={"name": "items", "stages": [stage]})
    first = apply_through_review(plan, operator, approver)
    assert total_sqlite(lite) == delta
    assert states(first) == {PartitionState.SUCCEEDED: len(Partition.objects.filter(run=first))}

    if switch == "plan_edited":
        stage = {**stage, "params": {**stage["params"], "target": "pg"}}
        services.plan_update(plan=plan, actor=operator, document={"stages": [stage]}, partial=True)
    else:  # the same target name now points at PostgreSQL
        settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "lite": pg_target}
    second = apply_through_review(plan, operator, approver)

    assert PartitionState.REUSED not in states(second)
    assert total_pg(pg_target) == delta
    assert total_sqlite(lite) == delta  # the SQLite target was not touched again
    assert selectors.receipt(second)["verified"] is True


# --- The same files in another workspace ---------------------------------------------------


def registry_entries(workspace: str) -> int:
    """Registry entries present for `workspace`, of every module a warm_registry stage named."""
    from runs_app.kinds.prime import registry_get

    modules = set(
        Partition.objects.filter(stage__executor="warm_registry").values_list(
            "inputs__module", flat=True
        )
    )
    return len(registry_get(workspace, sorted(modules)))


def effect_count(example: str, workspace: str, scratch: dict[str, Path]) -> int:
    """How much of the example plan's effect exists for `workspace`."""
    if example.startswith("docs-index"):
        return DocPage.objects.filter(workspace=workspace).count()
    if example.startswith("assets-index"):
        return AssetIndexEntry.objects.filter(workspace=workspace).count()
    if example.startswith("pack-"):
        return len(list((scratch["artifacts"] / "pack" / workspace).glob("*.tar.gz")))
    if example.startswith("prime-bytecode"):
        return len(list((scratch["bytecode"] / workspace).rglob("*.pyc")))
    if example.startswith("prime-registry"):
        return registry_entries(workspace)
    raise AssertionError(example)


WORKSPACE_KEYED = [
    "docs-index-by-route",
    "assets-index-by-bucket",
    "pack-backend-by-module",
    "prime-bytecode-by-module",
    "prime-registry-by-dag-depth",
]


@pytest.mark.parametrize("example", WORKSPACE_KEYED)
def test_the_same_files_in_another_workspace_are_processed_for_that_workspace(
    example, demo_copy, tmp_path, scratch, settings, operator, approver
):
    twin = tmp_path / "twin"
    shutil.copytree(demo_copy, twin)
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "twin": str(twin.resolve())}
    document = json.loads((EXAMPLES / "plans" / f"{example}.json").read_text())
    plan = services.plan_create(actor=operator, document=document)
    first = apply_through_review(plan, operator, approver)
    assert effect_count(example, "demo", scratch) > 0
    assert effect_count(example, "twin", scratch) == 0

    for stage in document["stages"]:
        stage["params"]["workspace"] = "twin"
    document["name"] += "-twin"
    twin_plan = services.plan_create(actor=operator, document=document)
    second = apply_through_review(twin_plan, operator, approver)

    assert PartitionState.REUSED not in states(second)
    assert effect_count(example, "twin", scratch) == effect_count(example, "demo", scratch)
    assert selectors.receipt(first)["verified"] and selectors.receipt(second)["verified"]


# --- Effects removed since the earlier apply ------------------------------------------------


def _clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


REMOVALS = {
    "pack-backend-by-filesize": lambda s: _clear_dir(s["artifacts"] / "pack"),
    "prime-bytecode-by-module": lambda s: _clear_dir(s["bytecode"]),
    "prime-registry-by-dag-depth": lambda s: RegistryEntry.objects.all().delete(),
    "assets-stage-by-filesize": lambda s: _clear_dir(s["staging"]),
    "assets-index-by-bucket": lambda s: AssetIndexEntry.objects.all().delete(),
    "docs-index-by-route": lambda s: DocPage.objects.all().delete(),
}


def effects_present(example: str, scratch: dict[str, Path]) -> int:
    if example.startswith("assets-stage"):
        return len([p for p in scratch["staging"].rglob("*") if p.is_file()])
    return effect_count(example, "demo", scratch)


@pytest.mark.parametrize("example", sorted(REMOVALS))
def test_an_apply_after_its_effects_were_removed_runs_again_and_restores_them(
    example, demo_copy, scratch, settings, operator, approver
):
    document = json.loads((EXAMPLES / "plans" / f"{example}.json").read_text())
    plan = services.plan_create(actor=operator, document=document)
    first = apply_through_review(plan, operator, approver)
    present = effects_present(example, scratch)
    assert present > 0

    # Nothing removed: the next apply reuses every partition, and the effects stay.
    again = apply_through_review(plan, operator, approver)
    assert states(again) == {PartitionState.REUSED: Partition.objects.filter(run=first).count()}
    assert selectors.receipt(again)["verified"] is True

    REMOVALS[example](scratch)
    assert effects_present(example, scratch) == 0
    third = apply_through_review(plan, operator, approver)

    assert PartitionState.REUSED not in states(third)
    assert effects_present(example, scratch) == present
    assert selectors.receipt(third)["verified"] is True


def test_an_approval_against_one_database_does_not_cover_an_apply_on_another(
    sqlite_target, tmp_path, scratch, settings, operator, approver
):
    lite = sqlite_target("lite")
    seed_sqlite(lite)
    other = tmp_path / "other.sqlite3"
    seed_sqlite(other)
    params, _delta = MIGRATIONS["statements"]
    stage = {
        "id": "migrate",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": "lite", **params},
    }
    plan = services.plan_create(actor=operator, document={"name": "items", "stages": [stage]})
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    approve_if_needed(dry, approver)
    # The same name, another database file with the same rows: not what was reviewed.
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "lite": f"sqlite:///{other}"}

    with pytest.raises(ServiceError) as refused:
        services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk)

    assert refused.value.code == codes.STALE_PLAN
    [changed] = refused.value.extra["diff"]["stages"]
    places = changed["identities"]
    assert places["from"]["params.target"]["identity"] == f"sqlite:{lite.resolve()}"
    assert places["to"]["params.target"]["identity"] == f"sqlite:{other.resolve()}"
    assert total_sqlite(lite) == total_sqlite(other) == 0
    shown = render_to_string("hxo/runs/_stale_diff.html", {"diff": refused.value.extra["diff"]})
    assert "where it acts changed" in shown and str(other.resolve()) in shown


# --- Effects damaged since the earlier apply ------------------------------------------------


def _zero_fill(paths: list[Path]) -> None:
    assert paths
    for p in paths:
        p.write_bytes(b"\0" * p.stat().st_size)


def _content_named(path: Path) -> bool:
    """A content-addressed file still holds the bytes its name says (full or 16-hex hash)."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stem = path.name.split(".")[-3] if path.name.endswith(".tar.gz") else path.name.split(".")[-2]
    return digest.startswith(stem)


DAMAGES = {
    # Archives overwritten in place (the input pointers still name them).
    "pack-backend-by-filesize": lambda s: list((s["artifacts"] / "pack").rglob("*.tar.gz")),
    # Stage manifests overwritten in place.
    "assets-stage-by-filesize": lambda s: list(
        (s["staging"] / "demo" / "_manifests").glob("*.json")
    ),
}


@pytest.mark.parametrize("example", sorted(DAMAGES))
def test_an_apply_after_its_effects_were_damaged_runs_again_and_repairs_them(
    example, demo_copy, scratch, operator, approver
):
    document = json.loads((EXAMPLES / "plans" / f"{example}.json").read_text())
    plan = services.plan_create(actor=operator, document=document)
    apply_through_review(plan, operator, approver)
    damaged = DAMAGES[example](scratch)
    _zero_fill(damaged)
    assert not any(_content_named(p) for p in damaged)

    again = apply_through_review(plan, operator, approver)

    assert PartitionState.REUSED not in states(again)
    assert all(_content_named(p) for p in damaged)
    assert selectors.receipt(again)["verified"] is True


# --- Effects damaged in place, same size (attack finding 8) ---------------------------------
#
# The class: an effect check, or an apply's "already there" check, that trusts something
# weaker than the content (a staged copy's size, a pyc's header, a registry entry's source
# hash). A same-size change then counted as the effect: the partition was reused, or ran and
# kept the damaged file. Each case flips one byte (or one field) and applies again.


def _flip_middle(path: Path, *, past: int = 0) -> bytes:
    """Flip one bit in the middle of `path` (after its first `past` bytes); the good bytes."""
    good = path.read_bytes()
    data = bytearray(good)
    at = past + (len(data) - past) // 2
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    assert path.stat().st_size == len(good)
    return good


def _staged_copies(s: dict[str, Path]) -> list[Path]:
    return sorted(p for p in s["staging"].rglob("*") if p.is_file() and "_manifests" not in p.parts)


FLIPS = {
    # A staged copy (content-hashed name) with one bit changed.
    "assets-stage-by-filesize": lambda s: _staged_copies(s)[0],
    # A pyc with a correct header and a damaged body (PEP 552 header: 16 bytes).
    "prime-bytecode-by-module": lambda s: sorted(s["bytecode"].rglob("*.pyc"))[0],
    # A pack archive.
    "pack-backend-by-filesize": lambda s: sorted((s["artifacts"] / "pack").rglob("*.tar.gz"))[0],
}


@pytest.mark.parametrize("example", sorted(FLIPS))
def test_a_same_size_damaged_effect_is_not_reused_and_the_next_apply_repairs_it(
    example, demo_copy, scratch, operator, approver
):
    document = json.loads((EXAMPLES / "plans" / f"{example}.json").read_text())
    plan = services.plan_create(actor=operator, document=document)
    first = apply_through_review(plan, operator, approver)
    total = Partition.objects.filter(run=first).count()
    victim = FLIPS[example](scratch)
    good = _flip_middle(victim, past=16)

    again = apply_through_review(plan, operator, approver)

    # The damaged partition ran (the others may be reused), and put the right bytes back.
    found = states(again)
    assert found.get(PartitionState.SUCCEEDED, 0) >= 1, found
    assert sum(found.values()) == total
    assert victim.read_bytes() == good
    assert selectors.receipt(again)["verified"] is True
    # The first run's receipt vouches for its effects as they are now: repaired, verified.
    assert selectors.receipt(first)["verified"] is True


def test_a_registry_entry_changed_in_place_is_not_reused_and_the_next_apply_rewrites_it(
    demo_copy, scratch, operator, approver
):
    """The registry's "already current" test read only the entry's source hash: an entry
    whose other fields were changed (its source hash kept) was kept by the re-run."""
    document = json.loads((EXAMPLES / "plans" / "prime-registry-by-dag-depth.json").read_text())
    plan = services.plan_create(actor=operator, document=document)
    first = apply_through_review(plan, operator, approver)
    total = Partition.objects.filter(run=first).count()
    row = RegistryEntry.objects.filter(workspace="demo").order_by("module").first()
    good = row.entry
    RegistryEntry.objects.filter(pk=row.pk).update(entry={**good, "public_names": ["forged"]})

    again = apply_through_review(plan, operator, approver)

    found = states(again)
    assert found.get(PartitionState.SUCCEEDED, 0) >= 1, found
    assert sum(found.values()) == total
    assert RegistryEntry.objects.get(pk=row.pk).entry == good
    assert selectors.receipt(again)["verified"] is True
