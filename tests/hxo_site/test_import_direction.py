"""The apps' arrows point one way: blueprints_app → hxo_site; runs_app → blueprints_app and
hxo_site. hxo_site imports neither app (its URL conf and settings name them, as they must), and
the registry never imports runs_app. Read from the source with `ast`, so an import hidden in a
function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each package may not import from; the files allowed to are the wiring.
FORBIDDEN = {
    "hxo_site": ({"blueprints_app", "runs_app"}, {"urls.py", "settings.py"}),
    "blueprints_app": ({"runs_app"}, set()),
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    forbidden, wiring = FORBIDDEN[package]
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in wiring or path.parent != ROOT / package
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from runs_app import kinds\n    importlib.import_module('runs_app.x')\n"
    )
    assert imported_packages(module) == {"runs_app"}
