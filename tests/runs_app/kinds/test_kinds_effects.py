"""`Executor.effect_exists` for every registered executor: True while the effect an apply
recorded is there, False once it is removed or damaged (issue 11 §2). The engine reuses an
earlier partition only on True, so a False here is what makes a deleted archive, a cleared
cache or deleted index rows be written again.

Each case applies a stage with the real executor (the kinds' test driver), then checks every
partition's recorded output against what is there.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blueprints_app.registry import EXECUTORS, load_plugin
from blueprints_app.registry_io import registry_import
from runs_app.models import AssetIndexEntry, DocPage, RegistryEntry
from tests.runs_app import testkinds
from tests.runs_app.kinds.conftest import EXAMPLES, Driver

PLUGIN_DIR = EXAMPLES / "plugins" / "hxo_plugin_linkcheck"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))
load_plugin("hxo_plugin_linkcheck.components", origin="tests")


@dataclasses.dataclass
class Env:
    tmp: Path
    scratch: dict[str, Path]
    lite: Path


def _files(root: Path, pattern: str = "*") -> list[Path]:
    return [p for p in root.rglob(pattern) if p.is_file()] if root.exists() else []


def _zero_fill(paths: list[Path]) -> None:
    """Damage files in place, keeping their names and sizes."""
    assert paths
    for p in paths:
        p.write_bytes(b"\0" * p.stat().st_size)


def _sql(env: Env, sql: str) -> None:
    with sqlite3.connect(env.lite) as conn:
        conn.execute(sql)
    conn.close()


def _stage(kind: str, partitioner: str, executor: str, **params: Any) -> dict[str, Any]:
    return {
        "id": "s",
        "kind": kind,
        "partitioner": partitioner,
        "executor": executor,
        "params": params,
        "depends_on": [],
    }


@dataclasses.dataclass
class Case:
    stage: Callable[[Env], dict[str, Any]]
    remove: Callable[[Env], object]
    damage: Callable[[Env], object] | None = None
    kind: str = ""


CASES: dict[str, Case] = {
    "pack_backend": Case(
        stage=lambda env: _stage(
            "deploy.pack", "by_module", "pack_backend", workspace="demo", root="backend"
        ),
        # Archives removed, the input pointers left behind: the pointer must not vouch.
        remove=lambda env: [p.unlink() for p in _files(env.scratch["artifacts"], "*.tar.gz")],
        damage=lambda env: _zero_fill(_files(env.scratch["artifacts"], "*.tar.gz")),
    ),
    "warm_registry": Case(
        stage=lambda env: _stage(
            "deploy.prime", "by_dag_depth", "warm_registry", workspace="demo", root="backend"
        ),
        remove=lambda env: RegistryEntry.objects.all().delete(),
    ),
    "prime_caches": Case(
        stage=lambda env: _stage(
            "deploy.prime", "by_module", "prime_caches", workspace="demo", root="backend"
        ),
        remove=lambda env: shutil.rmtree(env.scratch["bytecode"]),
        damage=lambda env: _zero_fill(_files(env.scratch["bytecode"], "*.pyc")),
    ),
    "index_assets": Case(
        stage=lambda env: _stage(
            "assets.index", "by_asset_bucket", "index_assets", workspace="demo", root="assets"
        ),
        remove=lambda env: AssetIndexEntry.objects.all().delete(),
        damage=lambda env: AssetIndexEntry.objects.update(sha256="0" * 64),
    ),
    "index_assets (assets.stage)": Case(
        stage=lambda env: _stage(
            "assets.stage", "by_filesize", "index_assets", workspace="demo", root="assets"
        ),
        remove=lambda env: [
            p.unlink() for p in _files(env.scratch["staging"]) if "_manifests" not in p.parts
        ],
        damage=lambda env: _zero_fill(_files(env.scratch["staging"] / "demo" / "_manifests")),
    ),
    "docs_index": Case(
        stage=lambda env: _stage(
            "docs.index", "by_route_map", "docs_index", workspace="demo", root="docs"
        ),
        remove=lambda env: DocPage.objects.all().delete(),
        damage=lambda env: DocPage.objects.update(sha256="0" * 64),
    ),
    "docs_linkcheck": Case(
        stage=lambda env: _stage(
            "docs.linkcheck",
            "by_doc_pages",
            "docs_linkcheck",
            workspace="demo",
            root="docs",
            fail_on_broken=False,
        ),
        remove=lambda env: shutil.rmtree(env.scratch["artifacts"] / "linkcheck"),
        damage=lambda env: _zero_fill(_files(env.scratch["artifacts"] / "linkcheck")),
    ),
    "sql_migrate": Case(
        stage=lambda env: _stage(
            "deploy.migrate",
            "by_sql_batch",
            "sql_migrate",
            target="lite",
            statements=["UPDATE items SET n = n + 1", "UPDATE items SET n = n * 2"],
        ),
        remove=lambda env: _sql(env, "DELETE FROM hxo_ledger_batches"),
    ),
    "sql_migrate backfill": Case(
        stage=lambda env: _stage(
            "deploy.migrate",
            "by_sql_batch",
            "sql_migrate",
            target="lite",
            backfill={
                "sql": "UPDATE items SET n = n + 1 WHERE id >= :start AND id < :end",
                "table": "items",
                "key_column": "id",
                "batch_size": 2,
            },
        ),
        remove=lambda env: _sql(env, "DELETE FROM hxo_ledger_intervals"),
    ),
    "test_append": Case(
        stage=lambda env: testkinds.stage("s", env.tmp, items=3, kind=testkinds.TEST_KIND),
        remove=lambda env: [p.unlink() for p in env.tmp.glob("effect-s-*")],
    ),
}

# Executors whose check has not landed yet keep the safe default (never reused).
PENDING: dict[str, str] = {}


def _case_params() -> list[Any]:
    found = []
    for name in sorted(CASES):
        marks = [pytest.mark.xfail(reason=PENDING[name], strict=False)] if name in PENDING else []
        found.append(pytest.param(name, marks=marks, id=name))
    return found


def test_every_registered_idempotent_executor_has_an_effect_case():
    # Non-idempotent partitions are never reused, whatever effect_exists says.
    # Built-in and plugin executors; test-only ones of other modules may come and go.
    idempotent = {
        name
        for name, cls in EXECUTORS.items()
        if cls.idempotent and not cls.__module__.startswith("tests.")
    }
    assert "docs_linkcheck" in idempotent
    assert idempotent - {"bench_noop"} <= {name.split(" ")[0] for name in CASES}


@pytest.fixture
def env(demo_copy, scratch, tmp_path, sqlite_target, test_kinds) -> Env:
    """The demo workspace, scratch storages, a SQLite target "lite" with a table `items`,
    and the plugin's kind in the registry."""
    registry_import(data=json.loads((PLUGIN_DIR / "kind.json").read_text()))
    lite = sqlite_target("lite")
    with sqlite3.connect(lite) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.executemany("INSERT INTO items VALUES (?, 1)", [(i,) for i in range(1, 5)])
    conn.close()
    work = tmp_path / "items"
    work.mkdir()
    return Env(tmp=work, scratch=scratch, lite=lite)


def _checks(driver: Driver, stage: dict[str, Any], applied: Any) -> list[bool]:
    executor = EXECUTORS[stage["executor"]]()
    kind, manifest, data = driver.partition(stage)
    return [
        executor.effect_exists(
            driver.context(stage, kind, data, i, spec, dry_run=False), applied.results[i]
        )
        for i, spec in enumerate(manifest.partitions)
    ]


@pytest.mark.parametrize("name", _case_params())
def test_effect_exists_while_the_effect_is_there_and_not_once_it_is_gone(
    name, env: Env, driver: Driver
):
    case = CASES[name]
    stage = case.stage(env)
    applied = driver.run(stage, dry_run=False)
    assert applied.results, "the case makes no partition"

    assert _checks(driver, stage, applied) == [True] * len(applied.results)
    case.remove(env)
    assert _checks(driver, stage, applied) == [False] * len(applied.results)


DAMAGEABLE = sorted(n for n, c in CASES.items() if c.damage is not None)


@pytest.mark.parametrize("name", DAMAGEABLE)
def test_effect_exists_is_false_when_the_effect_is_there_but_not_what_was_recorded(
    name, env: Env, driver: Driver
):
    case = CASES[name]
    stage = case.stage(env)
    applied = driver.run(stage, dry_run=False)

    assert case.damage is not None
    case.damage(env)

    assert not any(_checks(driver, stage, applied))


def test_an_executor_that_does_not_say_is_never_reused():
    from blueprints_app.registry import Executor

    class Quiet(Executor):
        name = "quiet"

    assert Quiet().effect_exists(None, {"status": "done"}) is False  # type: ignore[arg-type]


# Where each executor's effect lives, as its outputs must name it (by identity, not alias).
PLACE_KEYS = ("location", "database", "root", "target")


@pytest.mark.parametrize("name", [n for n in _case_params() if n.values[0] != "test_append"])
def test_every_apply_output_names_its_effect_by_identity_and_digest(name, env: Env, driver: Driver):
    stage = CASES[name].stage(env)
    applied = driver.run(stage, dry_run=False)

    for out in applied.results:
        effect = out.get("effect")
        assert isinstance(effect, dict), out
        place = next((effect[k] for k in PLACE_KEYS if k in effect), None)
        assert isinstance(place, str) and (":" in place or place.startswith("/")), effect
        assert any("digest" in k or k == "sha256" for k in effect), effect


# --- The receipt checks the effects (issue 11 §2, attack finding 7) -------------------------
#
# `verified` used to be recomputed from stored results only: with every archive of an apply
# deleted, the receipt still said verified. Now each executor is asked, per partition, whether
# the recorded effect is still there.


def _apply_case(name: str, env: Env, operator: Any, approver: Any) -> Any:
    """Dry-run, approve where asked, and apply the case's stage through the engine."""
    from tests.runs_app.kinds.test_kinds_engine import through_the_engine

    _dry, run = through_the_engine(
        {"name": f"effects-{name.split(' ')[0]}", "stages": [CASES[name].stage(env)]},
        operator,
        approver,
    )
    return run


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", _case_params())
def test_the_receipt_is_verified_only_while_every_recorded_effect_is_there(
    name, env: Env, operator, approver
):
    from runs_app import selectors
    from runs_app.models import Partition

    run = _apply_case(name, env, operator, approver)
    partitions = Partition.objects.filter(run=run).count()
    assert partitions > 0

    intact = selectors.receipt(run)
    assert intact["verified"] is True and intact["merkle_verified"] is True
    assert intact["effects"] == {
        "checked": partitions,
        "missing": 0,
        "complete": True,
        "thorough": False,
        "missing_partitions": [],
    }
    assert selectors.receipt(run, thorough=True)["verified"] is True

    CASES[name].remove(env)

    for thorough in (False, True):
        gone = selectors.receipt(run, thorough=thorough)
        assert gone["merkle_verified"] is True  # the stored results are unchanged...
        assert gone["verified"] is False  # ...but what they describe is gone
        assert gone["effects"]["checked"] == gone["effects"]["missing"] == partitions
        assert gone["effects"]["missing_partitions"] == [
            {"stage": "s", "index": i, "reason": "effect_missing"}
            for i in range(min(partitions, 20))
        ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", DAMAGEABLE)
def test_the_receipt_is_not_verified_once_a_recorded_effect_was_changed_in_place(
    name, env: Env, operator, approver
):
    from runs_app import selectors

    run = _apply_case(name, env, operator, approver)
    assert selectors.receipt(run)["verified"] is True
    assert CASES[name].damage is not None
    CASES[name].damage(env)

    changed = selectors.receipt(run)
    assert changed["merkle_verified"] is True and changed["verified"] is False
    assert changed["effects"]["missing"] >= 1
    assert {m["reason"] for m in changed["effects"]["missing_partitions"]} == {"effect_missing"}


@pytest.mark.django_db(transaction=True)
def test_the_receipt_names_the_one_partition_whose_archive_was_deleted(
    env: Env, operator, approver
):
    from runs_app import selectors
    from runs_app.models import Partition

    run = _apply_case("pack_backend", env, operator, approver)
    assert Partition.objects.filter(run=run).count() > 1
    victim = Partition.objects.filter(run=run).order_by("index").last()
    archive = env.scratch["artifacts"] / victim.output["archive"]
    assert archive.is_file()
    archive.unlink()

    receipt = selectors.receipt(run)

    assert receipt["verified"] is False
    assert receipt["effects"]["missing"] == 1
    assert receipt["effects"]["missing_partitions"] == [
        {"stage": "s", "index": victim.index, "reason": "effect_missing"}
    ]


@pytest.mark.django_db(transaction=True)
def test_a_receipt_whose_effect_check_ran_out_of_time_is_not_verified(
    env: Env, operator, approver, settings, monkeypatch
):
    from runs_app import selectors
    from runs_app.engine import receipts

    run = _apply_case("pack_backend", env, operator, approver)
    assert selectors.receipt(run)["verified"] is True
    # The clock jumps past any budget as soon as the check starts.
    real = receipts.time.monotonic
    calls = iter(range(10**6))
    monkeypatch.setattr(receipts.time, "monotonic", lambda: real() + 3600 * next(calls))

    cut = selectors.receipt(run)

    assert cut["merkle_verified"] is True
    assert cut["effects"]["complete"] is False and cut["verified"] is False


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_receipt_checks_no_effects(env: Env, operator, approver):
    from runs_app import selectors, services
    from tests.helpers import drain

    plan = services.plan_create(
        actor=operator, document={"name": "dry", "stages": [CASES["pack_backend"].stage(env)]}
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    receipt = selectors.receipt(dry)
    assert receipt["verified"] is True
    assert receipt["effects"]["checked"] == 0
    assert not list(env.scratch["artifacts"].rglob("*.tar.gz"))


@pytest.mark.django_db(transaction=True)
def test_the_receipt_api_and_page_name_the_missing_effect(
    env: Env, operator, approver, viewer, api_client_for
):
    from django.test import Client

    run = _apply_case("pack_backend", env, operator, approver)
    api = api_client_for(viewer)
    page = Client()
    page.force_login(viewer)

    body = api.get(f"/api/v1/runs/{run.pk}/receipt/?thorough=1").json()
    assert body["verified"] is True and body["effects"]["thorough"] is True
    shown = page.get(f"/runs/{run.pk}/receipt/").content.decode()
    assert "status-ok" in shown and "every recorded effect is there" in shown

    for path in env.scratch["artifacts"].rglob("*.tar.gz"):
        path.unlink()

    body = api.get(f"/api/v1/runs/{run.pk}/receipt/").json()
    assert body["merkle_verified"] is True and body["verified"] is False
    assert body["effects"]["missing"] == body["effects"]["checked"] > 0
    shown = page.get(f"/runs/{run.pk}/receipt/").content.decode()
    assert "status-ok" not in shown and "status-error" in shown
    assert 'data-testid="receipt-missing"' in shown and "deleted or changed" in shown
    # The htmx partial says the same as the page.
    partial = page.get(f"/runs/{run.pk}/receipt/", HTTP_HX_REQUEST="true").content.decode()
    assert "status-error" in partial and "status-ok" not in partial


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", ["yes", "2", "²"])
def test_a_bad_thorough_value_is_refused_with_400(value, operator, viewer, api_client_for):
    from django.test import Client

    from runs_app.models import Run

    assert not Run.objects.exists()
    response = api_client_for(viewer).get(f"/api/v1/runs/1/receipt/?thorough={value}")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "thorough"
    page = Client()
    page.force_login(viewer)
    assert page.get(f"/runs/1/receipt/?thorough={value}").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_an_archive_touched_but_not_changed_is_hashed_again_and_still_verified(
    env: Env, operator, approver
):
    """A stat identity that changed is not a missing effect: the bytes are hashed, and equal."""
    import os

    from runs_app import selectors

    run = _apply_case("pack_backend", env, operator, approver)
    for path in env.scratch["artifacts"].rglob("*.tar.gz"):
        path.write_bytes(path.read_bytes())  # same bytes, new mtime and ctime
        os.utime(path, ns=(0, 0))
    assert selectors.receipt(run)["verified"] is True


@pytest.mark.django_db(transaction=True)
def test_an_untouched_archive_is_not_read_again_unless_thorough(
    env: Env, operator, approver, monkeypatch
):
    """The cheap check: an archive whose stat identity is the recorded one is not hashed."""
    from runs_app import selectors
    from runs_app.kinds import base

    run = _apply_case("pack_backend", env, operator, approver)
    hashed: list[str] = []
    real = base.object_matches

    def spy(storage: Any, name: Any, **kw: Any) -> bool:
        hashed.append(name)
        return real(storage, name, **kw)

    monkeypatch.setattr(base, "object_matches", spy)
    assert selectors.receipt(run)["verified"] is True
    assert hashed == []
    assert selectors.receipt(run, thorough=True)["verified"] is True
    assert len(hashed) == run.partitions.count()


# An index row whose hash column is intact but another column the apply wrote was changed:
# the check compares every written column (a digest recorded at write time), not the hash.
ROW_EDITS = {
    "index_assets": (
        lambda: AssetIndexEntry.objects.update(media_type="text/x-forged"),
        lambda: set(AssetIndexEntry.objects.values_list("media_type", flat=True)),
    ),
    "docs_index": (
        lambda: DocPage.objects.update(title="forged"),
        lambda: set(DocPage.objects.values_list("title", flat=True)),
    ),
}


@pytest.mark.parametrize("name", sorted(ROW_EDITS))
def test_an_index_row_changed_beside_its_hash_is_not_the_effect_and_a_rerun_restores_it(
    name, env: Env, driver: Driver
):
    edit, values = ROW_EDITS[name]
    stage = CASES[name].stage(env)
    applied = driver.run(stage, dry_run=False)
    good = values()
    assert _checks(driver, stage, applied) == [True] * len(applied.results)

    edit()
    assert not any(_checks(driver, stage, applied))

    rerun = driver.run(stage, dry_run=False)
    assert values() == good
    assert _checks(driver, stage, rerun) == [True] * len(rerun.results)
