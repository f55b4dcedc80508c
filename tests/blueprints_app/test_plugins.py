"""Plugins: packages that register partitioners and executors through the `hxo.plugins`
entry-point group or settings.HXO_PLUGINS (blueprints_app.registry.autodiscover)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from blueprints_app import registry

PLUGIN = textwrap.dedent(
    """\
    from blueprints_app.registry import Partitioner, register_partitioner

    CALLS = []


    @register_partitioner
    class Fake(Partitioner):
        name = "{name}"


    def setup():
        CALLS.append("setup")
    """
)


@pytest.fixture
def plugin_module(tmp_path: Path) -> Iterator[str]:
    """A module on sys.path that registers the partitioner `fake_plugin_part`; cleaned up."""
    (tmp_path / "fake_hxo_plugin.py").write_text(PLUGIN.format(name="fake_plugin_part"))
    (tmp_path / "broken_hxo_plugin.py").write_text("raise RuntimeError('no database driver')\n")
    sys.path.insert(0, str(tmp_path))
    yield "fake_hxo_plugin"
    sys.path.remove(str(tmp_path))
    for name in ("fake_hxo_plugin", "broken_hxo_plugin"):
        sys.modules.pop(name, None)
    registry.PARTITIONERS.pop("fake_plugin_part", None)
    for key in [k for k in registry.PLUGINS if "hxo_plugin" in k and "linkcheck" not in k]:
        registry.PLUGINS.pop(key)


def entry_points(*pairs: tuple[str, str]) -> list[EntryPoint]:
    return [EntryPoint(name, value, registry.PLUGIN_GROUP) for name, value in pairs]


def test_an_entry_point_in_the_hxo_plugins_group_registers_its_components(
    plugin_module, monkeypatch, settings
):
    monkeypatch.setattr(
        registry, "plugin_entry_points", lambda: entry_points(("fake", plugin_module))
    )
    settings.HXO_PLUGINS = []

    registry.autodiscover()

    assert "fake_plugin_part" in registry.PARTITIONERS
    assert registry.PLUGINS[plugin_module] == "entry point 'fake'"


def test_a_module_named_in_hxo_plugins_registers_its_components(plugin_module, settings):
    settings.HXO_PLUGINS = [plugin_module]

    registry.autodiscover()

    assert "fake_plugin_part" in registry.PARTITIONERS
    assert registry.PLUGINS[plugin_module] == "HXO_PLUGINS"


def test_a_module_and_callable_is_called_once(plugin_module, monkeypatch, settings):
    target = f"{plugin_module}:setup"
    monkeypatch.setattr(registry, "plugin_entry_points", lambda: entry_points(("fake", target)))
    settings.HXO_PLUGINS = [target]

    registry.autodiscover()
    registry.autodiscover()

    assert sys.modules[plugin_module].CALLS == ["setup"]


def test_a_plugin_that_fails_to_load_stops_hxo_naming_it(plugin_module, monkeypatch, settings):
    settings.HXO_PLUGINS = []
    monkeypatch.setattr(
        registry, "plugin_entry_points", lambda: entry_points(("broken", "broken_hxo_plugin"))
    )

    with pytest.raises(ImproperlyConfigured, match=r"'broken_hxo_plugin'.*no database driver"):
        registry.autodiscover()


def test_a_missing_plugin_module_stops_hxo(settings):
    settings.HXO_PLUGINS = ["no_such_hxo_plugin"]

    with pytest.raises(ImproperlyConfigured, match="HXO_PLUGINS"):
        registry.autodiscover()
