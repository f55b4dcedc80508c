"""deploy.prime on the `src/` trees of the click and requests sdists, through the engine.

warm_registry: every module of the tree (`find src -name '*.py'`, named as Python imports it
with `src/` on sys.path) has its registry entry, for the file's SHA-256. prime_caches: every
module has its bytecode file, with the PEP 552 checked-hash header of the source, and it
loads (`marshal`) into a code object of that file. by_dag_depth runs a module only after the
modules it imports (waves). Dry-runs write neither entries nor bytecode.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import marshal
import sys
import types
from pathlib import Path, PurePosixPath

import pytest

from runs_app.kinds.prime import pyc_path, registry_get
from runs_app.models import Partition, RegistryEntry
from tests.realmaterial.conftest import outputs_of, plan_of, stage
from tests.realmaterial.material import find_files
from tests.runs_app.kinds.conftest import tree_snapshot

pytestmark = [pytest.mark.real_material, pytest.mark.django_db(transaction=True)]

TREES = ["click", "requests"]
PARTITIONERS = ["by_dag_depth", "by_module"]


def modules_of(root: Path, src: str = "src") -> dict[str, str]:
    """Dotted module name → path relative to the workspace, for every .py under `src`."""
    found = {}
    for rel in find_files(root / src):
        if not rel.endswith(".py"):
            continue
        parts = list(PurePosixPath(rel).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = f"{src}/{rel}"
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("partitioner", PARTITIONERS)
@pytest.mark.parametrize("name", TREES)
def test_warm_registry_writes_an_entry_for_every_module(
    workspace_of, scratch, engine, name, partitioner
):
    root = workspace_of(name)
    document = plan_of(
        f"registry-{name}",
        stage("deploy.prime", partitioner, "warm_registry", workspace=name, root="src"),
    )

    def nothing_written() -> None:
        assert not RegistryEntry.objects.filter(workspace=name).exists()

    _dry, run = engine.run(document, unchanged=nothing_written)

    expected = modules_of(root)
    assert len(expected) >= 16  # click: 17 modules, requests: 18
    # The registry is a table (RegistryEntry): exactly these modules, none more.
    assert RegistryEntry.objects.filter(workspace=name).count() == len(expected)
    found = registry_get(name, list(expected))
    assert len(found) == len(expected)
    for module, rel in expected.items():
        entry = found[module]
        assert entry["module"] == module and entry["path"] == rel
        assert entry["source_sha256"] == sha256(root / rel)
    outputs = outputs_of(run)
    assert sum(o["cache_entries"] for o in outputs) == len(expected)
    if partitioner == "by_dag_depth":
        assert_imports_ran_first(run, found, name)


def assert_imports_ran_first(run, entries: dict, workspace: str) -> None:
    """Every module's internal imports are at a lower or equal depth (equal: a cycle), and
    a module of a lower wave finished before the importing module started."""
    by_module = {p.inputs["module"]: p for p in Partition.objects.filter(run=run)}
    edges = 0
    for entry in entries.values():
        mine = by_module[entry["module"]]
        for dep in entry["internal_imports"]:
            theirs = by_module[dep]
            assert theirs.wave <= mine.wave, (entry["module"], dep)
            if theirs.wave < mine.wave:
                edges += 1
                assert theirs.finished_at <= mine.started_at, (entry["module"], dep)
    assert edges > 10  # real packages import themselves a lot
    assert max(p.wave for p in by_module.values()) >= 2


@pytest.mark.parametrize("partitioner", PARTITIONERS)
@pytest.mark.parametrize("name", TREES)
def test_prime_caches_writes_bytecode_that_loads_for_every_module(
    workspace_of, scratch, engine, name, partitioner
):
    root = workspace_of(name)
    document = plan_of(
        f"bytecode-{name}",
        stage("deploy.prime", partitioner, "prime_caches", workspace=name, root="src"),
    )

    def nothing_written() -> None:
        assert tree_snapshot(scratch["bytecode"]) == {}

    _dry, run = engine.run(document, unchanged=nothing_written)

    expected = modules_of(root)
    for module, rel in expected.items():
        target = pyc_path(name, rel)
        data = target.read_bytes()
        source = (root / rel).read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER, module
        assert int.from_bytes(data[4:8], "little") == 0b11, module  # checked hash (PEP 552)
        assert data[8:16] == importlib.util.source_hash(source), module
        code = marshal.loads(data[16:])
        assert isinstance(code, types.CodeType)
        assert code.co_filename == str(root.resolve() / rel)
    pycs = [p for p in tree_snapshot(scratch["bytecode"]) if p.endswith(".pyc")]
    assert len(pycs) == len(expected)
    assert all(f".{sys.implementation.cache_tag}.pyc" in p for p in pycs)
    assert sum(o["cache_entries"] for o in outputs_of(run)) == len(expected)


def test_bytecode_of_a_real_module_runs(workspace_of, scratch, engine):
    """The bytecode HXO wrote for `click.globals` (a leaf: it imports only the standard
    library at run time) runs through importlib's own sourceless loader and defines what the
    source does."""
    workspace_of("click")
    document = plan_of(
        "bytecode-click",
        stage("deploy.prime", "by_dag_depth", "prime_caches", workspace="click", root="src"),
    )
    engine.run(document)

    rel = "src/click/globals.py"
    pyc = str(pyc_path("click", rel))
    loader = importlib.machinery.SourcelessFileLoader("hxo_real_click_globals", pyc)
    module = types.ModuleType(loader.name)
    loader.exec_module(module)
    assert callable(module.get_current_context)
    assert module.get_current_context(silent=True) is None


def test_a_src_layout_names_its_modules_as_python_imports_them(workspace_of, scratch, engine):
    """Primed from the sdist's root, click's modules are `click.*` (its pyproject/setup.cfg
    say the package lives in src/), not `src.click.*`."""
    root = workspace_of("click")
    document = plan_of(
        "registry-click-root",
        stage("deploy.prime", "by_dag_depth", "warm_registry", workspace="click", root="."),
    )
    engine.run(document)

    found = registry_get("click", list(modules_of(root)))
    for module, rel in modules_of(root).items():
        entry = found.get(module)
        assert entry is not None, module
        assert entry["path"] == rel
