"""The engine sits below the queue's entry points and the web layer: `runs_app.tasks` imports
the engine, never the reverse, and no engine module imports the services, views or API."""

from __future__ import annotations

import ast
from pathlib import Path

import runs_app.engine

ENGINE = Path(runs_app.engine.__file__).parent
FORBIDDEN = (
    "runs_app.tasks",
    "runs_app.services",
    "runs_app.views",
    "runs_app.api",
    "runs_app.serializers",
    "hxo_site.errors",
)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_engine_module_imports_the_tasks_the_services_or_the_web_layer() -> None:
    found = {
        f"{path.name}: {name}"
        for path in sorted(ENGINE.glob("*.py"))
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not found


def test_the_old_execution_module_is_gone() -> None:
    assert not (ENGINE.parent / "execution.py").exists()
