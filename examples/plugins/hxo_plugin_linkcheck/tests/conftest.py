"""Fixtures for the plugin's tests, run by HXO's pytest (its testpaths name this directory).

The plugin is imported from this checkout, as `HXO_PLUGINS` would import it, so the tests do
not need it pip-installed. HXO's cast of users comes from tests/conftest.py; transactional
tests get the registry rows back the way HXO's own engine tests do.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))

from blueprints_app.registry import load_plugin  # noqa: E402

load_plugin("hxo_plugin_linkcheck.components", origin="tests")

from tests.conftest import (  # noqa: E402, F401
    _fast_password_hashing,
    admiral,
    api_client_for,
    approver,
    operator,
    viewer,
)
from tests.runs_app.conftest import _registry_rows  # noqa: E402, F401

DOCS = {
    "docs/index.md": """\
        # Shopfront docs

        Start with [installing](guides/install.md#requirements), read the
        [API](api/) and the [changelog](/docs/changelog/). See also [the code](../src/app.py),
        the [logo](img/logo.png) and <https://example.com/never-fetched>.

        ```
        [not a link](nowhere.md)
        ```
        """,
    "docs/changelog.md": "# Changelog\n\n## 1.0\n\nBack to [the start](index.md).\n",
    "docs/guides/install.md": """\
        # Installing

        ## Requirements

        ## Requirements

        Then [configure](configure.md#environment-variables) and read
        [the second requirements](#requirements-1).
        """,
    "docs/guides/configure.md": "# Configure\n\n## Environment variables\n",
    "docs/api/index.md": "API\n===\n\n[Orders](orders.md) · [top](../index.md)\n",
    "docs/api/orders.md": "# Orders {#orders-api}\n\n[self](#orders-api)\n",
    "docs/img/logo.png": "PNG",
    "src/app.py": "print('hi')\n",
}


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def docs_workspace(tmp_path: Path, settings: Any) -> Path:
    """A workspace "site" whose docs have no broken link, and artifact storage in tmp_path."""
    root = tmp_path / "site"
    write_tree(root, DOCS)
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "site": str(root.resolve())}
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "artifacts")},
        },
    }
    return root
