"""Odd files in a workspace, for every kind that reads files: a FIFO (or another non-regular
file) is refused with `not_a_regular_file` at once, at partitioning and at execution, never a
worker blocked in open(); a file name that is not UTF-8 is refused with
`undecodable_file_name` and the escaped name, never a 500."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, ComponentError, load_plugin
from runs_app import services
from runs_app.models import Partition, PartitionState, Run, RunState
from tests.helpers import drain

PLUGIN_DIR = Path(__file__).resolve().parents[3] / "examples" / "plugins" / "hxo_plugin_linkcheck"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))
load_plugin("hxo_plugin_linkcheck.components", origin="tests")

pytestmark = pytest.mark.django_db

LINKCHECK = "docs.linkcheck"
BOUND_S = 10.0

# (kind, partitioner, executor, root, a path the stage reads, its content)
FILE_KINDS = [
    ("deploy.pack", "by_filesize", "pack_backend", "backend", "backend/api/odd.py", "X = 1\n"),
    ("deploy.pack", "by_module", "pack_backend", "backend", "backend/api/odd.py", "X = 1\n"),
    ("deploy.prime", "by_module", "prime_caches", "backend", "backend/api/odd.py", "X = 1\n"),
    ("deploy.prime", "by_dag_depth", "warm_registry", "backend", "backend/api/odd.py", "X = 1\n"),
    ("assets.index", "by_asset_bucket", "index_assets", "assets", "assets/styles/odd.css", "a{}"),
    ("assets.index", "by_filesize", "index_assets", "assets", "assets/styles/odd.css", "a{}"),
    ("assets.stage", "by_asset_bucket", "index_assets", "assets", "assets/styles/odd.css", "a{}"),
    ("docs.index", "by_route_map", "docs_index", "docs", "docs/odd.md", "# Odd\n\ntext\n"),
    (LINKCHECK, "by_doc_pages", "docs_linkcheck", "docs", "docs/odd.md", "# Odd\n\ntext\n"),
]
IDS = [f"{k}-{p}-{e}" for k, p, e, *_ in FILE_KINDS]
# One per partitioner that lists files (the undecodable-name rule is the partitioner's).
LISTING = list({p: row for row in FILE_KINDS for p in [row[1]]}.values())


@pytest.fixture
def linkcheck_kind(db: None) -> None:
    from hxo_plugin_linkcheck.components import KIND_DEFINITION

    JobKind.objects.update_or_create(
        kind=LINKCHECK, defaults={k: v for k, v in KIND_DEFINITION.items() if k != "kind"}
    )


def _stage(kind: str, partitioner: str, executor: str, root: str) -> dict[str, Any]:
    return {
        "id": "s",
        "kind": kind,
        "partitioner": partitioner,
        "executor": executor,
        "params": {"workspace": "demo", "root": root},
        "depends_on": [],
    }


def bounded(fn: Callable[[], Any], fifo: Path) -> dict[str, Any]:
    """`fn()` in this thread (it may use the test's database transaction), watched: if it is
    still running after BOUND_S, a watchdog opens the FIFO for writing, which releases a
    reader blocked in open(), and the elapsed time fails the test instead of hanging it."""
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(BOUND_S):
            return
        while not done.is_set():
            with contextlib.suppress(OSError):  # ENXIO: no reader yet, try again
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.05)

    watcher = threading.Thread(target=watchdog, daemon=True)
    watcher.start()
    started = time.monotonic()
    outcome: dict[str, Any] = {}
    try:
        outcome["value"] = fn()
    except Exception as exc:
        outcome["error"] = exc
    finally:
        done.set()
        watcher.join(5)
    outcome["elapsed"] = time.monotonic() - started
    assert outcome["elapsed"] < BOUND_S, f"blocked for {outcome['elapsed']:.1f} s"
    return outcome


@pytest.mark.parametrize(
    ("kind", "partitioner", "executor", "root", "rel", "text"), FILE_KINDS, ids=IDS
)
def test_a_fifo_at_partitioning_is_refused_at_once(
    demo_copy, driver, linkcheck_kind, kind, partitioner, executor, root, rel, text
) -> None:
    fifo = demo_copy / rel
    os.mkfifo(fifo)
    outcome = bounded(lambda: driver.partition(_stage(kind, partitioner, executor, root)), fifo)
    error = outcome.get("error")
    assert isinstance(error, ComponentError), outcome
    assert error.code == "not_a_regular_file"
    assert rel in error.message and "FIFO" in error.message


@pytest.mark.parametrize(
    ("kind", "partitioner", "executor", "root", "rel", "text"), FILE_KINDS, ids=IDS
)
def test_a_file_swapped_for_a_fifo_before_the_apply_fails_its_partition_fast(
    demo_copy, driver, linkcheck_kind, kind, partitioner, executor, root, rel, text
) -> None:
    path = demo_copy / rel
    path.write_text(text)
    stage = _stage(kind, partitioner, executor, root)
    kind_row, manifest, data = driver.partition(stage)
    owner = [
        i
        for i, spec in enumerate(manifest.partitions)
        if rel.removeprefix(f"{root}/") in str(spec.inputs)
        or rel in str(spec.fingerprints)
        or rel in str(data)
    ]
    assert owner, "the file is pinned in the manifest"
    path.unlink()
    os.mkfifo(path)  # swapped after the dry-run was approved
    executor_obj = EXECUTORS[executor]()
    failures = []
    for i, spec in enumerate(manifest.partitions):
        ctx = driver.context(stage, kind_row, data, i, spec, dry_run=False)
        outcome = bounded(lambda ctx=ctx: executor_obj.execute(ctx), path)
        if "error" in outcome:
            failures.append(outcome["error"])
    assert failures, "some partition reads the FIFO"
    codes = {getattr(e, "code", type(e).__name__) for e in failures}
    assert codes == {"not_a_regular_file"}, failures


@pytest.mark.parametrize(
    ("kind", "partitioner", "executor", "root", "rel", "text"), LISTING, ids=[r[1] for r in LISTING]
)
def test_an_undecodable_file_name_is_refused_with_the_escaped_name(
    demo_copy, driver, linkcheck_kind, kind, partitioner, executor, root, rel, text
) -> None:
    parent = os.fsencode(demo_copy / rel).rsplit(b"/", 1)[0]
    suffix = os.fsencode(rel).rsplit(b".", 1)[1]
    with open(parent + b"/\xff." + suffix, "wb") as f:
        f.write(text.encode())
    with pytest.raises(ComponentError) as caught:
        driver.partition(_stage(kind, partitioner, executor, root))
    assert caught.value.code == "undecodable_file_name"
    assert "\\xff." + suffix.decode() in caught.value.message


@pytest.mark.parametrize(
    ("kind", "partitioner", "executor", "root", "rel", "text"), LISTING, ids=[r[1] for r in LISTING]
)
def test_a_backslash_in_a_file_name_is_refused_at_the_listing_not_at_apply(
    demo_copy, driver, linkcheck_kind, kind, partitioner, executor, root, rel, text
) -> None:
    """A name the apply could never open (a backslash is read as a separator) is refused when
    the tree is listed, by every partitioner that lists files: the dry-run had accepted it and
    every apply of its partition failed (found by a tryout)."""
    parent, suffix = (demo_copy / rel).parent, rel.rsplit(".", 1)[1]
    (parent / f"back\\slash.{suffix}").write_text(text)
    with pytest.raises(ComponentError) as caught:
        driver.partition(_stage(kind, partitioner, executor, root))
    assert caught.value.code == "unsupported_file_name"
    assert f"back\\\\slash.{suffix}" in caught.value.message


def test_a_file_named_like_a_drive_is_packed_and_read_back(demo_copy, driver) -> None:
    """'a:notes.txt' is a POSIX file name: it was refused as an absolute Windows path when
    opened, after the listing had accepted it."""
    (demo_copy / "backend" / "a:notes.txt").write_text("drive-like name\n")
    stage = _stage("deploy.pack", "by_filesize", "pack_backend", "backend")
    applied = driver.run(stage, dry_run=False)  # every partition opens and packs its files
    assert "backend/a:notes.txt" in [row[0] for row in applied.data["files"]]
    assert sum(o["files_processed"] for o in applied.results) == len(applied.data["files"])


def test_a_socket_in_a_workspace_is_refused_too(demo_copy, driver) -> None:
    import socket

    sock_path = demo_copy / "backend" / "api" / "s.py"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(sock_path))
        with pytest.raises(ComponentError) as caught:
            driver.partition(_stage("deploy.pack", "by_filesize", "pack_backend", "backend"))
        assert caught.value.code == "not_a_regular_file"
    finally:
        server.close()


# --- through the API and the CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "partitioner", "executor", "root", "rel", "text"), LISTING, ids=[r[1] for r in LISTING]
)
def test_a_dry_run_over_an_undecodable_name_fails_with_its_code_never_a_500(
    demo_copy, linkcheck_kind, admiral, api_client_for, kind, partitioner, executor, root, rel, text
) -> None:
    # Files are read by the worker that partitions the run: the POST answers 202, and the
    # run fails with the partitioner's code and path, shown by the API; no partition exists.
    parent = os.fsencode(demo_copy / rel).rsplit(b"/", 1)[0]
    (Path(os.fsdecode(parent + b"/\xff.txt"))).write_text(text)
    client = api_client_for(admiral)
    stage = _stage(kind, partitioner, executor, root)
    plan = client.post("/api/v1/plans/", {"name": "odd", "stages": [stage]}, format="json")
    assert plan.status_code == 201, plan.json()
    response = client.post(f"/api/v1/plans/{plan.json()['id']}/dry-run/")
    assert response.status_code == 202, response.content[:300]
    assert drain(response.json()["id"]).state == RunState.FAILED
    run = client.get(f"/api/v1/runs/{response.json()['id']}/").json()
    assert run["error"]["code"] == "partitioning_failed"
    error = run["error"]["errors"][0]
    assert error["code"] == "undecodable_file_name"
    assert "\\xff.txt" in error["message"]
    assert not Partition.objects.exists()


@pytest.mark.parametrize("flag", ["--dry-run", "--apply"])
def test_the_cli_over_an_odd_file_ends_with_a_failed_run_and_its_code(
    demo_copy, admiral, tmp_path, flag
) -> None:
    # The partitioner reads the files in the worker: `submit` stores the plan and the run
    # (the plan stays, to be fixed and submitted again), the run fails with the code, and
    # `status` says so with a non-zero exit.
    os.mkfifo(demo_copy / "backend" / "api" / "odd.py")
    plan_file = tmp_path / "plan.json"
    stage = _stage("deploy.pack", "by_filesize", "pack_backend", "backend")
    plan_file.write_text(json.dumps({"name": "odd", "stages": [stage]}))
    out = StringIO()
    call_command("hxo", "--user", admiral.username, "submit", str(plan_file), flag, stdout=out)
    run = Run.objects.get()
    assert "partitioning" in out.getvalue()
    assert drain(run).state == RunState.FAILED
    assert run.error["errors"][0]["code"] == "not_a_regular_file"
    status = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("hxo", "--user", admiral.username, "status", str(run.pk), stdout=status)
    assert exited.value.code == 3
    assert "error partitioning_failed" in status.getvalue()
    assert not Partition.objects.exists()


@pytest.mark.parametrize(
    ("kind", "partitioner", "executor", "root", "rel", "text"), FILE_KINDS, ids=IDS
)
def test_an_apply_over_a_file_swapped_for_a_fifo_fails_fast_and_frees_the_worker(
    demo_copy, linkcheck_kind, admiral, settings, kind, partitioner, executor, root, rel, text
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0  # each attempt fails at once; no waiting between them
    # The drainer's heartbeat thread has its own connection: on PostgreSQL its lease renewal
    # would wait on rows this test's (never committed) transaction holds, and each drain then
    # waits 10 s for the thread at exit. A lease far longer than the test means no renewal.
    settings.HXO_LEASE_MS = 600_000
    path = demo_copy / rel
    path.write_text(text)
    plan = services.plan_create(
        actor=admiral,
        document={"name": "odd", "stages": [_stage(kind, partitioner, executor, root)]},
    )
    dry = drain(services.run_start_dry_run(plan=plan, actor=admiral).pk, deadline_s=30)
    assert dry.state in (RunState.AWAITING_APPROVAL, RunState.SUCCEEDED)
    path.unlink()
    os.mkfifo(path)
    # Swapped before the apply: the worker resolves the manifest again and fails the run at
    # once, without blocking on the FIFO.
    early = services.run_apply(plan=plan, actor=admiral)
    outcome = bounded(lambda: drain(early.pk, deadline_s=30), path)
    assert "value" in outcome, outcome
    assert outcome["value"].state == RunState.FAILED
    assert outcome["value"].error["errors"][0]["code"] == "not_a_regular_file"
    assert not Partition.objects.filter(run=early).exists()
    # Swapped after the apply was accepted: its partition fails fast, the worker goes on.
    path.unlink()
    path.write_text(text)
    run = services.run_apply(plan=plan, actor=admiral, force_rerun=True)
    services.run_partition(run_id=run.pk)  # a worker partitions it while the file is regular
    path.unlink()
    os.mkfifo(path)
    outcome = bounded(lambda: drain(run.pk, deadline_s=30), path)
    assert "value" in outcome, outcome
    finished = outcome["value"]
    assert finished.state == RunState.FAILED
    failed = Partition.objects.filter(run=run, state=PartitionState.FAILED)
    assert {p.error["code"] for p in failed} == {"not_a_regular_file"}
    assert all(rel in p.error["message"] for p in failed)
    assert Partition.objects.filter(run=run, state=PartitionState.RUNNING).count() == 0
