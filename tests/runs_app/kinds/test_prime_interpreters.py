"""deploy.prime: bytecode for the interpreter the application runs on.

A stage's `python_version` / `python_executable` picks the target; bytecode for another
interpreter is compiled by that interpreter in a subprocess, and loads there. Interpreters that
are not installed (or not allowed) are refused at plan validation (400 at plan save) with the
param's path. The cross-interpreter tests use a real second CPython when this machine has one
(pyenv's 3.12 here) and skip, with the reason, when it does not.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from runs_app.kinds import pyinterp
from runs_app.kinds.prime import pyc_path
from tests.runs_app.kinds.conftest import write_files

pytestmark = pytest.mark.django_db

OTHER = next((i for i in pyinterp.interpreters() if i.version == (3, 12)), None)
needs_other = pytest.mark.skipif(OTHER is None, reason="no Python 3.12 installed here")


def prime_stage(partitioner="by_module", executor="prime_caches", **params):
    return {
        "id": "prime",
        "kind": "deploy.prime",
        "partitioner": partitioner,
        "executor": executor,
        "params": {"workspace": "t", "root": "app", **params},
    }


def load_with(python: str, pyc: str) -> dict:
    """Ask `python` to load the pyc as its own bytecode: header, then marshal."""
    script = (
        "import sys, marshal, importlib.util, json;"
        "d = open(sys.argv[1], 'rb').read();"
        "assert d[:4] == importlib.util.MAGIC_NUMBER, 'magic';"
        "c = marshal.loads(d[16:]);"
        "print(json.dumps({'names': list(c.co_names), 'file': c.co_filename}))"
    )
    done = subprocess.run(
        [python, "-I", "-S", "-c", script, pyc], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@needs_other
def test_bytecode_for_another_python_is_compiled_by_it_and_loads_there(driver, workspace, scratch):
    # PEP 695 syntax: valid for 3.12, a syntax error for the 3.11 running HXO.
    write_files(workspace, {"app/newer.py": "type Pair = tuple[int, int]\nX = 1\n"})
    assert sys.version_info[:2] != (3, 12)

    run = driver.run(prime_stage(python_version="3.12"), dry_run=False)

    assert run.data["failed_modules"] == []
    assert run.data["interpreter"]["version"] == "3.12"
    assert all(r["failed_modules"] == [] for r in run.results)
    assert sum(r["compiled"] for r in run.results) == len(run.data["modules"]) == 9
    for row in run.data["modules"].values():
        pyc = pyc_path("t", row["path"], OTHER)
        assert pyc.name.endswith(".cpython-312.pyc"), pyc
        loaded = load_with(OTHER.executable, str(pyc))
        assert loaded["file"].endswith(row["path"])
    assert "Pair" in load_with(OTHER.executable, str(pyc_path("t", "app/newer.py", OTHER)))["names"]
    # Nothing was written for the running interpreter.
    assert not list(scratch["bytecode"].rglob(f"*.{sys.implementation.cache_tag}.pyc"))

    again = driver.run(prime_stage(python_version="3.12"), dry_run=False)
    assert sum(r["compiled"] for r in again.results) == 0
    assert sum(r["cache_entries"] for r in again.results) == 9


@needs_other
def test_the_same_module_fails_for_the_running_python_and_compiles_for_312(driver, workspace):
    write_files(workspace, {"app/newer.py": "type Pair = tuple[int, int]\n"})

    here = driver.run(prime_stage(), dry_run=True)
    there = driver.run(prime_stage(python_executable=OTHER.executable), dry_run=True)

    assert [f["module"] for f in here.data["failed_modules"]] == ["app.newer"]
    assert there.data["failed_modules"] == []
    assert any("will fail" in r["summary"] for r in here.results)
    assert all("will fail" not in r["summary"] for r in there.results)


def test_the_running_python_is_the_default_and_can_be_named(driver, workspace, scratch):
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"

    run = driver.run(prime_stage(python_version=version), dry_run=False)

    assert run.data["interpreter"]["cache_tag"] == sys.implementation.cache_tag
    pyc = pyc_path("t", "app/util.py")
    assert pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"python_version": "3.99"}, "stages[0].params.python_version"),
        ({"python_executable": "/bin/sh"}, "stages[0].params.python_executable"),
        ({"python_executable": "python3"}, "stages[0].params.python_executable"),
        ({"python_version": "2.7"}, "stages[0].params.python_version"),
    ],
)
def test_an_interpreter_that_is_not_installed_is_refused_at_plan_save(
    workspace, api_client_for, operator, params, path
):
    client = api_client_for(operator)
    document = {"name": "prime elsewhere", "stages": [prime_stage(**params)]}

    saved = client.post("/api/v1/plans/", document, format="json")

    assert saved.status_code == 400, saved.content
    errors = {(e["path"], e["code"]) for e in saved.json()["errors"]}
    assert path in {p for p, _c in errors}, errors


def test_an_interpreter_gone_since_partitioning_is_a_permanent_partition_error(
    driver, workspace, settings
):
    from blueprints_app.registry import EXECUTORS, ComponentError

    stage = prime_stage()
    kind, manifest, data = driver.partition(stage)
    data["interpreter"] = {**data["interpreter"], "executable": "/nonexistent/python3.12",
                           "magic": "00000000", "cache_tag": "cpython-312"}  # fmt: skip
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["prime_caches"]().execute(ctx)

    assert info.value.code == "interpreter_not_found" and info.value.permanent


@needs_other
def test_a_partition_told_to_stop_kills_the_compiling_interpreter_and_writes_nothing(
    driver, workspace, scratch
):
    import dataclasses

    from blueprints_app.registry import EXECUTORS, LeaseLost

    stage = prime_stage(python_version="3.12")
    kind, manifest, data = driver.partition(stage)
    stopped: list[str] = []

    def stop_with(cancel):
        if cancel is not None:  # the lease is lost as soon as the interpreter runs
            stopped.append("lease lost")
            cancel("lease lost")

    def heartbeat():
        if stopped:
            raise LeaseLost("lease lost")

    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)
    ctx = dataclasses.replace(ctx, stop_with=stop_with, heartbeat=heartbeat)

    with pytest.raises(LeaseLost):
        EXECUTORS["prime_caches"]().execute(ctx)

    assert stopped == ["lease lost"]
    assert not [p for p in scratch["bytecode"].rglob("*") if p.is_file()]
