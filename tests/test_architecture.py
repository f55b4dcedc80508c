"""The import direction of the house (docs/architecture.md, "Apps and arrows").

    runs_app  ──▶  blueprints_app  ──▶  hxo_site
        ├──────────▶  notify_app  ───────────▲
        └───────────────────────────────▲

`hxo_site` (the site's plumbing: audit log, errors, capabilities, auth, middleware) imports
neither app; `blueprints_app` (the registry and the contract's validator) never imports
`runs_app`; inside `runs_app` the engine never imports the web layer (views, API,
serializers, forms, the editor), the services, selectors and policies, nor the django-q2 task
entry points, all of which sit above it, and raises its own errors, not `ServiceError`.

Every import counts, at module level or inside a function, and so does
`importlib.import_module("...")` with a literal name: a deferred import is still an arrow.
Read with `ast`, so the check runs without importing anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The engine: below the web layer and below the task entry points.
ENGINE = ("runs_app/engine", "runs_app/models", "runs_app/hashing.py", "runs_app/transitions.py")
WEB_LAYER = (
    "runs_app.views",
    "runs_app.api",
    "runs_app.api_urls",
    "runs_app.urls",
    "runs_app.serializers",
    "runs_app.forms",
    "runs_app.editor",
    "runs_app.templatetags",
    "runs_app.search_api",
    "runs_app.tasks",
    "runs_app.services",
    "runs_app.selectors",
    "runs_app.policies",
    # The service layer's refusal: the engine raises its own (runs_app.engine.errors).
    "hxo_site.errors",
)


def imported_modules(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, dotted module name) for every import in `path`, deferred ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            # `from runs_app import services` names a module too.
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def product_files(*places: str) -> list[Path]:
    files: list[Path] = []
    for place in places:
        path = ROOT / place
        candidates = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
        files += candidates  # migrations too: they are imported code like any other
    return files


def offending(files: list[Path], forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    found = []
    for path in files:
        for line, module in imported_modules(path, root):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return sorted(set(found))


def test_the_site_plumbing_imports_neither_app() -> None:
    # The root URLconf composes the apps by dotted strings, which are not imports.
    assert offending(product_files("hxo_site"), ("blueprints_app", "runs_app")) == []


def test_the_remote_cli_imports_neither_django_nor_the_apps() -> None:
    # `hxo` runs on a CI machine without the app's settings: it speaks HTTP only.
    forbidden = ("django", "rest_framework", "django_q", "hxo_site", "blueprints_app", "runs_app")
    assert offending(product_files("hxo_cli"), forbidden) == []


def test_the_registry_never_imports_runs() -> None:
    assert offending(product_files("blueprints_app"), ("runs_app",)) == []


def test_the_notifier_imports_neither_the_runs_nor_the_registry() -> None:
    # notify_app sits beside the registry: runs_app emits into it, it knows no run.
    assert offending(product_files("notify_app"), ("runs_app", "blueprints_app")) == []
    assert offending(product_files("hxo_site", "blueprints_app"), ("notify_app",)) == []


def test_the_engine_never_imports_the_web_layer_the_services_or_the_tasks() -> None:
    assert product_files("runs_app/engine"), "the engine package moved: update ENGINE"
    assert offending(product_files(*ENGINE), WEB_LAYER) == []


# The layers of runs_app, top to bottom, as docs/architecture.md's table names them: a module
# imports runs_app modules of its own layer or below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "web",
        (
            "runs_app.views",
            "runs_app.api",
            "runs_app.api_urls",
            "runs_app.urls",
            "runs_app.search_api",
            "runs_app.search_urls",
            "runs_app.serializers",
            "runs_app.forms",
            "runs_app.editor",
            "runs_app.templatetags",
            "runs_app.admin",
            "runs_app.management",
            "runs_app.apps",
        ),
    ),
    ("tasks", ("runs_app.tasks",)),
    (
        "services and reads",
        ("runs_app.services", "runs_app.selectors", "runs_app.policies", "runs_app.metrics"),
    ),
    ("engine", ("runs_app.engine",)),
    (
        "below",
        (
            "runs_app.kinds",
            "runs_app.manifest",
            "runs_app.targets",
            "runs_app.workspaces",
            "runs_app.sqlpolicy",
            "runs_app.sqllint",
            "runs_app.search",
            "runs_app.transitions",
            "runs_app.hashing",
            "runs_app.forking",
            "runs_app.graph",
            "runs_app.markup",
            "runs_app.notifications",
            "runs_app.models",
            "runs_app.migrations",
        ),
    ),
]


def layer_of(module: str) -> int | None:
    for depth, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return depth
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_runs_app_module_has_a_layer() -> None:
    unplaced = [
        module_name(p) for p in product_files("runs_app") if layer_of(module_name(p)) is None
    ]
    assert unplaced in ([], ["runs_app"]), f"place these in LAYERS and the map: {unplaced}"


def test_runs_app_imports_only_its_own_layer_or_below() -> None:
    upward = []
    for path in product_files("runs_app"):
        here = layer_of(module_name(path))
        if here is None:
            continue
        for line, module in imported_modules(path):
            there = layer_of(module)
            if there is not None and there < here:
                upward.append(
                    f"{path.relative_to(ROOT)}:{line} ({LAYERS[here][0]}) imports {module} "
                    f"({LAYERS[there][0]})"
                )
    assert sorted(set(upward)) == []


def test_the_engine_is_one_package() -> None:
    # execution.py was split along its seams into runs_app/engine/; no second home returns.
    assert not (ROOT / "runs_app" / "execution.py").exists()


def test_the_checker_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a deferred import, a relative import and an
    # import_module call are all arrows.
    (tmp_path / "blueprints_app").mkdir()
    sample = tmp_path / "blueprints_app" / "_architecture_probe.py"
    sample.write_text(
        "import importlib\n"
        "def f():\n"
        "    from runs_app import services\n"
        "    importlib.import_module('runs_app.kinds')\n"
        "from .registry import EXECUTORS\n",
        encoding="utf-8",
    )
    found = offending([sample], ("runs_app", "blueprints_app.registry"), root=tmp_path)
    assert found == [
        "blueprints_app/_architecture_probe.py:3 imports runs_app",
        "blueprints_app/_architecture_probe.py:3 imports runs_app.services",
        "blueprints_app/_architecture_probe.py:4 imports runs_app.kinds",
        "blueprints_app/_architecture_probe.py:5 imports blueprints_app.registry",
        "blueprints_app/_architecture_probe.py:5 imports blueprints_app.registry.EXECUTORS",
    ]


@pytest.mark.parametrize(
    "module", ["runs_app.engine", "hxo_site.audit", "notify_app.outbox", "runs_app.notifications"]
)
def test_the_homes_named_in_the_map_exist(module: str) -> None:
    # docs/architecture.md names these; a move that forgets the map fails here.
    path = ROOT.joinpath(*module.split("."))
    assert path.is_dir() or path.with_suffix(".py").is_file(), module
    assert f"`{module}" in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
