"""Fixtures for the remote CLI's tests: the `hxo` console script as pip installs it, run in a
subprocess against pytest-django's live server, with the cast's API tokens.

The script is made from this checkout's pyproject.toml entry into a private directory, so the
tests run the `[project.scripts]` entry itself and never touch the shared virtualenv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from blueprints_app.bootstrap import create_roles, load_contract
from hxo_site.authentication import token_for
from tests.runs_app.testkinds import make_test_kinds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def hxo_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the `hxo_cli` package and `bin/hxo`, the console script made from
    pyproject.toml's `[project.scripts]` entry by distlib's ScriptMaker, the code pip itself
    writes console scripts with (building a wheel would need setuptools >= 70.1 from the
    network; the script pip makes from it is this one)."""
    from pip._vendor.distlib.scripts import ScriptMaker

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"hxo": "hxo_cli.main:entry_point"}
    assert (
        "hxo_cli"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    target = tmp_path_factory.mktemp("hxo-installed")
    shutil.copytree(
        ROOT / "hxo_cli", target / "hxo_cli", ignore=shutil.ignore_patterns("__pycache__")
    )
    (target / "bin").mkdir()
    maker = ScriptMaker(None, str(target / "bin"))
    maker.executable = sys.executable
    maker.variants = {""}
    made = maker.make_multiple([f"{name} = {spec}" for name, spec in scripts.items()])
    assert made == [str(target / "bin" / "hxo")], made
    return target


def cli_env(install: Path, **extra: str) -> dict[str, str]:
    """A CI box's environment: no Django settings, no SECRET_KEY, only the installed
    distribution on the path (the venv's site-packages come with its interpreter)."""
    env = {
        "PATH": f"{install / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(install),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
    }
    env.update(extra)
    return env


@pytest.fixture
def hxo(
    hxo_install: Path, live_server, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`hxo("status", 5, token=key)`: run the installed script against the live server."""

    def run(
        *args: object, token: str, url: str | None = None, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(hxo_install / "bin" / "hxo"), *map(str, args)],
            cwd=tmp_path,  # not the checkout: the apps are not importable from here
            env=cli_env(hxo_install, HXO_URL=url or live_server.url, HXO_TOKEN=token, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(autouse=True)
def _registry_rows(request: pytest.FixtureRequest) -> None:
    # Transactional tests flush the database, data migrations included: put the rows back.
    if request.node.get_closest_marker("django_db"):
        request.getfixturevalue("db")
        load_contract()
        create_roles()
        make_test_kinds()


@pytest.fixture
def tokens(admiral, operator, approver, viewer) -> dict[str, str]:
    return {
        "admiral": token_for(admiral).key,
        "operator": token_for(operator).key,
        "approver": token_for(approver).key,
        "viewer": token_for(viewer).key,
    }
