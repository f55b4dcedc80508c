"""deploy.prime: one bad module fails one module; the dry-run says which, and where.

Each case is a real way a module fails: syntax newer than the target (PEP 695 `type`,
`except*` for a 3.10 target), a file that parses but does not compile (`return` at module
level, a raw SyntaxError from the compiler), source that is not UTF-8 and declares no
encoding, a null byte. The partition succeeds for the rest (compileall's bar) unless the
stage says `on_module_error: "fail"`, and no error leaves an executor raw (the engine would
retry it as transient).
"""

from __future__ import annotations

import importlib.util
import marshal

import pytest

from blueprints_app.registry import EXECUTORS, ComponentError
from runs_app.kinds.prime import pyc_path, registry_get
from tests.runs_app.kinds.conftest import tree_snapshot, write_files

pytestmark = pytest.mark.django_db

BAD = {
    "app/newer.py": "type Pair = tuple[int, int]\n",  # PEP 695: Python 3.12+
    "app/groups.py": "try:\n    pass\nexcept* ValueError:\n    pass\n",  # 3.11+
    "app/returns.py": "x = 1\nreturn x\n",  # parses; the compiler refuses it
    "app/latin.py": b"NAME = '\xe9t\xe9'\n",  # Latin-1 bytes, no coding cookie
    "app/nul.py": b"x = 1\x00\n",
}


def prime_stage(partitioner="by_module", executor="prime_caches", **params):
    return {
        "id": "prime",
        "kind": "deploy.prime",
        "partitioner": partitioner,
        "executor": executor,
        "params": {"workspace": "t", "root": "app", **params},
    }


def good_modules(run) -> set[str]:
    return {m for m, row in run.data["modules"].items() if not row["error"]}


def test_the_partitioner_pins_every_module_that_will_not_compile_with_file_and_line(
    driver, workspace
):
    write_files(workspace, BAD)

    _kind, _manifest, data = driver.partition(prime_stage(python_version="3.10"))

    failed = {f["module"]: f for f in data["failed_modules"]}
    # For a 3.10 target, `except*` is refused by the target's grammar (feature_version).
    assert {"app.newer", "app.groups", "app.latin", "app.nul"} <= set(failed)
    assert failed["app.groups"]["line"] == 3 and failed["app.groups"]["file"] == "app/groups.py"
    assert failed["app.newer"]["line"] == 1
    assert "utf-8" in failed["app.latin"]["error"]
    assert data["modules"]["app.newer"]["depth"] is None


def test_a_dry_run_names_the_modules_that_will_fail_in_its_preview(driver, workspace, scratch):
    write_files(workspace, BAD)

    for executor in ("prime_caches", "warm_registry"):
        run = driver.run(prime_stage(executor=executor), dry_run=True)

        # The partition of the root's own modules (app/*.py) holds them all.
        (result,) = [r for r in run.results if r["failed_modules"]]
        failed = {f["module"]: f for f in result["failed_modules"]}
        assert {"app.newer", "app.latin", "app.nul"} <= set(failed)
        assert "app/newer.py:1" in result["summary"] and "will fail" in result["summary"]
        assert {m["module"] for m in result["modules"] if m["action"] == "fail"} == set(failed)
    assert tree_snapshot(scratch["var"]) == {}


def test_apply_compiles_every_good_module_and_reports_each_bad_one(driver, workspace, scratch):
    write_files(workspace, BAD)

    run = driver.run(prime_stage(), dry_run=False)

    failed = {f["module"]: f for r in run.results for f in r["failed_modules"]}
    # The compiler's own refusal (parses, does not compile) is a per-module failure too.
    assert set(failed) == {"app.newer", "app.returns", "app.latin", "app.nul"}
    assert failed["app.returns"]["line"] == 2
    assert "outside function" in failed["app.returns"]["error"]
    good = good_modules(run) - {"app.returns"}
    compiled = sum(r["compiled"] for r in run.results)
    assert compiled == sum(r["cache_entries"] for r in run.results) == len(good) == 9
    for name in good:
        data = pyc_path("t", run.data["modules"][name]["path"]).read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER
        assert marshal.loads(data[16:]).co_filename.endswith(run.data["modules"][name]["path"])
    for name in failed:
        assert not pyc_path("t", run.data["modules"][name]["path"]).exists()


def test_the_registry_registers_every_good_module_and_reports_each_bad_one(driver, workspace):
    write_files(workspace, BAD)

    run = driver.run(prime_stage("by_dag_depth", "warm_registry"), dry_run=False)

    failed = [f for r in run.results for f in r["failed_modules"]]
    assert {f["module"] for f in failed} == {"app.newer", "app.latin", "app.nul"}
    names = list(run.data["modules"])
    stored = registry_get("t", names)
    assert set(stored) == set(names) - {"app.newer", "app.latin", "app.nul"}
    assert sum(r["cache_entries"] for r in run.results) == len(stored)


def test_on_module_error_fail_fails_the_partition_permanently_and_writes_nothing(
    driver, workspace, scratch
):
    write_files(workspace, {"app/returns.py": "return 1\n"})
    stage = prime_stage(on_module_error="fail")
    kind, manifest, data = driver.partition(stage)
    ctx = driver.context(stage, kind, data, 0, manifest.partitions[0], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["prime_caches"]().execute(ctx)

    assert info.value.code == "syntax_error" and info.value.permanent
    assert "app/returns.py:1" in str(info.value)
    assert not list(scratch["bytecode"].rglob("*.pyc"))
    assert data["on_module_error"] == "fail"


def test_on_module_error_is_a_param_of_the_plan_and_refuses_other_values():
    from blueprints_app.registry import PARTITIONERS
    from blueprints_app.validation import schema_errors

    for name in ("by_dag_depth", "by_module"):
        schema = PARTITIONERS[name].get_params_schema()
        assert schema["properties"]["on_module_error"]["default"] == "skip"
        errors = schema_errors(schema, {"workspace": "demo", "on_module_error": "ignore"}, "p")
        assert [e.path for e in errors] == ["p.on_module_error"]


def test_module_level_imports_make_edges_and_deferred_ones_do_not(driver, workspace):
    write_files(
        workspace,
        {
            "app/lazy.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from app import api\nelse:\n    from app import text\n"
            "def f():\n    from app import models\n    return models\n"
            "class K:\n    from app import util\n",
            # A real cycle at import time: a <-> b.
            "app/a.py": "from app import b\n",
            "app/b.py": "from app import a\n",
        },
    )

    _kind, manifest, data = driver.partition(prime_stage("by_dag_depth", "warm_registry"))

    assert data["modules"]["app.lazy"]["internal"] == ["app.text", "app.util"]
    assert data["cycles"] == [{"size": 2, "depth": 0, "modules": ["app.a", "app.b"]}]
    wave = {p.inputs["module"]: p.wave for p in manifest.partitions}
    assert wave["app.a"] == wave["app.b"]
    labels = [p.label for p in manifest.partitions if p.inputs["module"] == "app.a"]
    assert "import cycle of 2" in labels[0]


def _through_engine(operator, approver, **params):
    from runs_app import services
    from tests.helpers import drain
    from tests.runs_app.kinds.test_kinds_engine import approve_if_needed

    document = {
        "name": "prime with a bad module",
        "stages": [prime_stage("by_dag_depth", "prime_caches", **params)],
    }
    plan = services.plan_create(actor=operator, document=document)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    approve_if_needed(dry, approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))
    return dry, run


def test_through_the_engine_a_bad_module_is_reported_once_on_the_review_page_never_retried(
    workspace, scratch, operator, approver, viewer
):
    from django.test import Client

    from runs_app.models import Partition, RunState

    write_files(
        workspace, {"app/returns.py": "x = 1\nreturn x\n", "app/newer.py": BAD["app/newer.py"]}
    )

    dry, run = _through_engine(operator, approver)

    page = Client()
    page.force_login(viewer)
    shown = page.get(f"/runs/{dry.pk}/").content.decode()
    assert "will fail" in shown and "app/newer.py:1" in shown
    assert run.state == RunState.SUCCEEDED
    parts = {p.inputs["module"]: p for p in Partition.objects.filter(run=run)}
    assert all(p.attempts == 1 for p in parts.values())
    assert parts["app.returns"].output["failed_modules"][0]["line"] == 2
    assert parts["app.newer"].output["failed_modules"][0]["file"] == "app/newer.py"
    assert pyc_path("t", "app/util.py").is_file()
    detail = page.get(f"/runs/{run.pk}/partitions/{parts['app.returns'].pk}/").content.decode()
    assert "Modules that failed" in detail
    assert "<code>app/returns.py</code></td><td>2</td>" in detail and "outside function" in detail


def test_through_the_engine_on_module_error_fail_fails_at_once_without_retries(
    workspace, scratch, operator, approver
):
    from runs_app.models import Partition, PartitionState, RunState

    write_files(workspace, {"app/returns.py": "x = 1\nreturn x\n"})

    _dry, run = _through_engine(operator, approver, on_module_error="fail")

    assert run.state == RunState.FAILED
    bad = Partition.objects.get(run=run, inputs__module="app.returns")
    assert bad.state == PartitionState.FAILED and bad.attempts == 1
    assert bad.error["code"] == "syntax_error"
    assert not pyc_path("t", "app/returns.py").exists()
