"""The README documents every environment variable that settings read."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

BASE = Path(settings.BASE_DIR)


def settings_variables() -> set[str]:
    source = (BASE / "hxo_site" / "settings.py").read_text()
    calls = re.findall(r"""(?:env_\w+|os\.environ\.get)\(\s*["']([A-Z][A-Z0-9_]*)["']""", source)
    return set(calls)


def readme_table_variables() -> set[str]:
    readme = (BASE / "README.md").read_text()
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", readme, flags=re.MULTILINE))


def test_settings_read_variables_at_all():
    assert {"DEBUG", "SECRET_KEY", "DATABASE_URL", "HXO_BROKER"} <= settings_variables()


def test_every_variable_settings_read_is_in_the_readme_table():
    missing = settings_variables() - readme_table_variables()

    assert not missing, f"add these to the README's configuration table: {sorted(missing)}"


def test_the_readme_table_lists_no_variable_settings_do_not_read():
    stale = readme_table_variables() - settings_variables()

    assert not stale, f"settings no longer read: {sorted(stale)}"
