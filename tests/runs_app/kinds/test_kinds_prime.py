"""deploy.prime: the ast import graph, by_dag_depth waves, warm_registry and prime_caches."""

from __future__ import annotations

import importlib.util
import marshal
import time
import types

import pytest

from blueprints_app.registry import EXECUTORS, ComponentError
from runs_app import forking
from runs_app.kinds import pygraph
from runs_app.kinds.prime import registry_get
from runs_app.models import RegistryEntry
from tests.runs_app.kinds.conftest import backdate, tree_snapshot, write_files

pytestmark = pytest.mark.django_db


def stored(workspace: str, module: str) -> dict | None:
    """The registry entry of `module` as the registry table holds it."""
    return registry_get(workspace, [module]).get(module)


def prime_stage(partitioner: str = "by_dag_depth", executor: str = "warm_registry", **params):
    return {
        "id": "prime",
        "kind": "deploy.prime",
        "partitioner": partitioner,
        "executor": executor,
        "params": {"workspace": "t", "root": "app", **params},
    }


def test_the_import_graph_resolves_absolute_relative_and_from_imports(driver, workspace):
    _kind, _manifest, data = driver.partition(prime_stage())

    modules = data["modules"]
    assert set(modules) == {
        "app",
        "app.api",
        "app.models",
        "app.models.item",
        "app.services",
        "app.services.cart",
        "app.text",
        "app.util",
    }
    assert modules["app.services.cart"]["internal"] == ["app.models.item", "app.text"]
    assert modules["app.models"]["internal"] == ["app.models.item"]
    # `from app.services import cart` depends on the submodule, not on the package.
    assert modules["app.api"]["internal"] == ["app.services.cart"]
    assert "re" in modules["app.text"]["imports"]
    assert modules["app.text"]["internal"] == []


def test_by_dag_depth_puts_leaves_first_and_every_module_after_its_imports(driver, workspace):
    _kind, manifest, data = driver.partition(prime_stage())

    wave = {p.inputs["module"]: p.wave for p in manifest.partitions}
    assert wave["app.util"] == wave["app.text"] == 0
    assert wave["app.models.item"] == 1
    assert wave["app.services.cart"] == 2
    assert wave["app.api"] == 3
    for name, row in data["modules"].items():
        assert all(wave[dep] < wave[name] for dep in row["internal"])
        if not row["internal"]:
            assert wave[name] == 0
    assert [p.wave for p in manifest.partitions] == sorted(p.wave for p in manifest.partitions)


def test_modules_in_an_import_cycle_share_a_depth():
    graph = {"a": ["b"], "b": ["c"], "c": ["b", "d"], "d": [], "e": ["a"]}

    depth = pygraph.depths(graph)

    assert depth == {"d": 0, "b": 1, "c": 1, "a": 2, "e": 3}


def test_the_demo_backends_graph_has_leaves_first_and_many_waves(driver, demo_copy):
    stage = {**prime_stage(), "params": {"workspace": "demo", "root": "backend"}}

    _kind, manifest, _data = driver.partition(stage)

    assert len(manifest.partitions) >= 40
    leaves = {p.inputs["module"] for p in manifest.partitions if p.wave == 0}
    assert {"backend.utils.money", "backend.core.errors", "backend.utils.text"} <= leaves
    waves = {p.inputs["module"]: p.wave for p in manifest.partitions}
    assert waves["backend.app"] == max(waves.values()) >= 6
    assert (
        waves["backend.models.refund"]
        > waves["backend.models.payment"]
        > waves["backend.models.invoice"]
    )


def test_warm_registry_writes_one_entry_per_module_and_skips_current_ones(
    driver, workspace, scratch
):
    first = driver.run(prime_stage(), dry_run=False)

    entry = stored("t", "app.models.item")
    assert entry["public_names"] == ["Item"]
    assert entry["classes"] == ["Item"]
    assert entry["internal_imports"] == ["app.util"]
    assert entry["imports"] == ["app.util", "app.util.add"]
    assert stored("t", "app.util")["public_names"] == ["add"]
    assert stored("t", "app.models")["public_names"] == ["Item"]  # __all__
    assert sum(r["written"] for r in first.results) == len(first.results) == 8
    before = dict(RegistryEntry.objects.values_list("module", "written_at"))

    second = driver.run(prime_stage(), dry_run=False)

    assert sum(r["written"] for r in second.results) == 0
    assert all(r["cache_entries"] == 1 for r in second.results)
    assert dict(RegistryEntry.objects.values_list("module", "written_at")) == before

    (workspace / "app/util.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    )
    third = driver.run(prime_stage(), dry_run=False)
    assert sum(r["written"] for r in third.results) == 1
    assert stored("t", "app.util")["public_names"] == ["add", "sub"]


def test_a_registry_dry_run_reports_entries_and_writes_no_cache_entry(driver, workspace, scratch):
    run = driver.run(prime_stage(), dry_run=True)

    assert sum(r["entries_to_write"] for r in run.results) == 8
    assert all(m["action"] == "write" for r in run.results for m in r["modules"])
    assert not RegistryEntry.objects.exists()
    assert tree_snapshot(scratch["var"]) == {}


def test_prime_caches_compiles_valid_bytecode_outside_the_workspace(driver, workspace, scratch):
    run = driver.run(prime_stage("by_module", "prime_caches"), dry_run=False)

    assert sum(r["compiled"] for r in run.results) == 8
    assert not list(workspace.rglob("__pycache__"))
    tag = importlib.util.cache_from_source("x.py").rsplit(".", 2)[-2]
    pyc = scratch["bytecode"] / "t" / "app" / "models" / "__pycache__" / f"item.{tag}.pyc"
    data = pyc.read_bytes()
    source = (workspace / "app/models/item.py").read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 0b11  # checked hash-based pyc
    assert data[8:16] == importlib.util.source_hash(source)
    code = marshal.loads(data[16:])
    assert isinstance(code, types.CodeType)
    assert "Item" in code.co_names


def test_prime_caches_skips_up_to_date_bytecode(driver, workspace, scratch):
    driver.run(prime_stage("by_module", "prime_caches"), dry_run=False)
    backdate(scratch["bytecode"])
    before = tree_snapshot(scratch["bytecode"])

    again = driver.run(prime_stage("by_module", "prime_caches"), dry_run=False)

    assert sum(r["compiled"] for r in again.results) == 0
    assert sum(r["up_to_date"] for r in again.results) == 8
    assert tree_snapshot(scratch["bytecode"]) == before


def test_a_bytecode_dry_run_writes_nothing(driver, workspace, scratch):
    run = driver.run(prime_stage("by_module", "prime_caches"), dry_run=True)

    assert sum(r["to_compile"] for r in run.results) == 8
    assert tree_snapshot(scratch["var"]) == {}


def test_workspace_code_is_never_imported_or_executed(driver, workspace, scratch, tmp_path):
    marker = tmp_path / "executed"
    write_files(
        workspace,
        {"app/boom.py": f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(3)\n"},
    )

    driver.run(prime_stage(), dry_run=False)
    driver.run(prime_stage("by_module", "prime_caches"), dry_run=False)

    assert not marker.exists()
    assert stored("t", "app.boom")["lines"] == 2


def test_a_module_that_does_not_parse_fails_its_partition_only_when_the_stage_says_so(
    driver, workspace
):
    write_files(workspace, {"app/broken.py": "def oops(:\n"})
    stage = prime_stage(on_module_error="fail")
    kind, manifest, data = driver.partition(stage)
    index = next(i for i, p in enumerate(manifest.partitions) if p.inputs["module"] == "app.broken")
    ctx = driver.context(stage, kind, data, index, manifest.partitions[index], dry_run=False)

    with pytest.raises(ComponentError) as info:
        EXECUTORS["warm_registry"]().execute(ctx)

    assert info.value.code == "syntax_error" and info.value.permanent
    assert "app/broken.py:1" in str(info.value)
    assert data["modules"]["app.broken"]["parse_error"].startswith("SyntaxError")
    assert stored("t", "app.broken") is None


def test_cleanup_stale_removes_old_bytecode_temp_files(workspace, scratch):
    import os

    scratch["bytecode"].mkdir(parents=True)
    old = scratch["bytecode"] / "x.pyc.tmp-1-1"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    assert EXECUTORS["prime_caches"]().cleanup_stale() == 1
    assert not old.exists()


def test_registry_entries_from_the_partitioners_parse_equal_entries_parsed_again(driver, demo_copy):
    """warm_registry reads what the partitioner parsed (`registry_facts`) instead of parsing
    every module again: the entries are the same, field for field, seal included."""
    from runs_app.kinds.prime import registry_entry

    stage = {**prime_stage(), "params": {"workspace": "demo", "root": "backend"}}
    _kind, _manifest, data = driver.partition(stage)
    facts = data["registry_facts"]

    assert set(facts) == set(data["modules"]) and len(facts) >= 40
    for name, row in data["modules"].items():
        source = (demo_copy / row["path"]).read_bytes()
        assert registry_entry("demo", name, row, source, facts[name]) == registry_entry(
            "demo", name, row, source
        )


def test_registry_facts_of_other_bytes_are_not_used(driver, workspace, scratch):
    """Facts serve only the bytes they were parsed from: facts whose digest is not the
    pinned source's (a file changed between the parse and the pin) or that lack a field are
    ignored, and the executor parses the source itself."""
    from runs_app.kinds.prime import registry_entry

    _kind, _manifest, data = driver.partition(prime_stage())
    row = data["modules"]["app.util"]
    source = (workspace / "app/util.py").read_bytes()
    wrong = {**data["registry_facts"]["app.util"], "public_names": ["forged"]}

    assert registry_entry("t", "app.util", row, source, wrong)["public_names"] == ["forged"]
    stale = {**wrong, "sha256": "0" * 64}
    assert registry_entry("t", "app.util", row, source, stale)["public_names"] == ["add"]
    assert registry_entry("t", "app.util", row, source, {"sha256": row["sha256"]}) == (
        registry_entry("t", "app.util", row, source)
    )


def test_only_a_warm_registry_stage_pins_registry_facts(driver, workspace):
    _kind, _manifest, data = driver.partition(prime_stage("by_dag_depth", "prime_caches"))

    assert "registry_facts" not in data


def _demo_jobs() -> list[tuple[bytes, str, bool, str]]:
    from tests.runs_app.kinds.conftest import DEMO_WORKSPACE

    paths = sorted(DEMO_WORKSPACE.rglob("*.py"))
    jobs = [(p.read_bytes(), f"m{i}", p.name == "__init__.py", p.name) for i, p in enumerate(paths)]
    return [*jobs, (b"def oops(:\n", "broken", False, "broken.py")]


@pytest.mark.parametrize("summaries", [False, True])
def test_parsing_on_two_cores_gives_what_parsing_in_one_gives(monkeypatch, summaries):
    """parse_many forks a child for half the sources (here forced on a small tree): the
    results, failures included, are those of parsing every module in this process."""
    monkeypatch.setattr(pygraph, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(forking.os, "cpu_count", lambda: 2)
    jobs = _demo_jobs()

    both = pygraph.parse_many(jobs, None, summaries)

    assert both == [pygraph.parse_one(*job, None, summaries) for job in jobs]
    assert both[-1][1]["type"] == "SyntaxError" and both[-1][0] == []
    assert all((r[2] is not None) == summaries for r in both[:-1])


def test_a_parsing_child_that_fails_leaves_its_half_to_the_parent(monkeypatch):
    """A child that cannot send its results exits non-zero: the parent parses its half."""
    import marshal as real_marshal
    import types as pytypes

    def refuse(_value):
        raise ValueError("the child cannot marshal")

    monkeypatch.setattr(pygraph, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(forking.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(
        forking, "marshal", pytypes.SimpleNamespace(dumps=refuse, loads=real_marshal.loads)
    )
    jobs = _demo_jobs()

    assert pygraph.parse_many(jobs) == [pygraph.parse_one(*job) for job in jobs]


def test_a_parsing_child_that_hangs_is_killed_and_its_half_parsed_here(monkeypatch):
    """A child that never answers (as one forked from a threaded worker could, blocked on a
    lock another thread held at the fork) is killed after its grace time and its half parsed
    here: the partitioning task never hangs on the pipe."""
    import os as real_os
    import time as real_time

    parent = real_os.getpid()
    parse = pygraph.parse_one

    def hang_in_child(*args):
        if real_os.getpid() != parent:
            real_time.sleep(600)  # the hang being tested: the parent must not wait for it
        return parse(*args)

    monkeypatch.setattr(pygraph, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(forking, "CHILD_GRACE_S", 0.5)
    monkeypatch.setattr(forking.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(pygraph, "parse_one", hang_in_child)
    jobs = _demo_jobs()

    # Returns (a hang would block here for ten minutes), with the child's half parsed here.
    assert pygraph.parse_many(jobs) == [parse(*job) for job in jobs]
