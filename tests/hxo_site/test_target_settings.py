"""HXO_DATABASE_TARGETS' forms: a URL per name (JSON or pairs, as always) and, in JSON, an
object naming the columns a review masks; anything else stops the settings, naming the
variable, and a target read at run time gets its sensitive columns."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from blueprints_app.registry import ComponentError
from hxo_site.settings import env_targets
from runs_app.targets import UNSUPPORTED_TARGET, get_target


def test_targets_read_urls_pairs_and_objects_with_sensitive_columns(monkeypatch):
    monkeypatch.setenv("HXO_DATABASE_TARGETS", "a=sqlite:///a.db,b=sqlite:///b.db")
    assert env_targets("HXO_DATABASE_TARGETS", {}) == {
        "a": "sqlite:///a.db",
        "b": "sqlite:///b.db",
    }
    monkeypatch.setenv(
        "HXO_DATABASE_TARGETS",
        '{"old": "sqlite:///o.db", "orders": {"url": "sqlite:///x.db", "sensitive": ["email"]}}',
    )
    assert env_targets("HXO_DATABASE_TARGETS", {}) == {
        "old": "sqlite:///o.db",
        "orders": {"url": "sqlite:///x.db", "sensitive": ["email"]},
    }


@pytest.mark.parametrize(
    "raw",
    [
        '{"orders": {"sensitive": ["email"]}}',
        '{"orders": {"url": "sqlite:///x.db", "sensitive": "email"}}',
        '{"orders": {"url": "sqlite:///x.db", "mask": ["email"]}}',
        '{"orders": 5}',
        '["sqlite:///x.db"]',
    ],
)
def test_a_bad_target_stops_the_settings_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("HXO_DATABASE_TARGETS", raw)
    with pytest.raises(ImproperlyConfigured, match="HXO_DATABASE_TARGETS"):
        env_targets("HXO_DATABASE_TARGETS", {})


def test_get_target_keeps_the_url_form_and_reads_sensitive_columns(settings, tmp_path):
    settings.HXO_DATABASE_TARGETS = {
        "plain": f"sqlite:///{tmp_path / 'p.db'}",
        "shop": {"url": f"sqlite:///{tmp_path / 's.db'}", "sensitive": ["Email", "card"]},
        "bad": {"url": f"sqlite:///{tmp_path / 'b.db'}", "sensitive": [1]},
    }
    assert get_target("plain").sensitive == frozenset()
    shop = get_target("shop")
    assert shop.sensitive == frozenset({"email", "card"})
    assert shop.sqlite_path == tmp_path / "s.db"
    with pytest.raises(ComponentError) as refused:
        get_target("bad")
    assert refused.value.code == UNSUPPORTED_TARGET
