"""Settings helpers fail loudly, naming the variable; the settings module refuses bad values."""

from __future__ import annotations

import runpy

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from hxo_site import settings as hxo_settings
from hxo_site.settings import env_bool, env_choice, env_int, env_int_renamed, env_mapping


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on "])
def test_env_bool_reads_true(monkeypatch, raw):
    monkeypatch.setenv("HXO_FLAG", raw)

    assert env_bool("HXO_FLAG", False) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off", ""])
def test_env_bool_reads_false(monkeypatch, raw):
    monkeypatch.setenv("HXO_FLAG", raw)

    assert env_bool("HXO_FLAG", True) is False


def test_env_bool_uses_the_default_when_unset(monkeypatch):
    monkeypatch.delenv("HXO_FLAG", raising=False)

    assert env_bool("HXO_FLAG", True) is True


def test_env_bool_refuses_anything_else_naming_the_variable(monkeypatch):
    monkeypatch.setenv("HXO_FLAG", "maybe")

    with pytest.raises(ImproperlyConfigured, match=r"HXO_FLAG.*'maybe'"):
        env_bool("HXO_FLAG", False)


def test_env_int_reads_an_integer_and_defaults_when_blank(monkeypatch):
    monkeypatch.setenv("HXO_N", "42")
    assert env_int("HXO_N", 1) == 42

    monkeypatch.setenv("HXO_N", " ")
    assert env_int("HXO_N", 7) == 7


def test_env_int_refuses_a_non_integer_naming_the_variable(monkeypatch):
    monkeypatch.setenv("HXO_WORKERS", "two")

    with pytest.raises(ImproperlyConfigured, match="HXO_WORKERS must be an integer"):
        env_int("HXO_WORKERS", 2)


def test_env_int_refuses_a_value_below_the_minimum_naming_the_variable(monkeypatch):
    monkeypatch.setenv("HXO_MAX_STAGES", "0")

    with pytest.raises(ImproperlyConfigured, match="HXO_MAX_STAGES must be >= 1"):
        env_int("HXO_MAX_STAGES", 50, minimum=1)


def test_env_choice_refuses_an_unknown_choice_naming_the_variable(monkeypatch):
    monkeypatch.setenv("HXO_BROKER", "rabbitmq")

    with pytest.raises(ImproperlyConfigured, match="HXO_BROKER must be one of orm, redis"):
        env_choice("HXO_BROKER", "orm", ("orm", "redis"))


def test_env_choice_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("HXO_BROKER", "Redis")

    assert env_choice("HXO_BROKER", "orm", ("orm", "redis")) == "redis"


def test_env_mapping_reads_json_and_pairs(monkeypatch):
    monkeypatch.setenv("HXO_WORKSPACES", '{"demo": "/srv/demo"}')
    assert env_mapping("HXO_WORKSPACES", {}) == {"demo": "/srv/demo"}

    monkeypatch.setenv("HXO_WORKSPACES", "a=/srv/a, b=/srv/b")
    assert env_mapping("HXO_WORKSPACES", {}) == {"a": "/srv/a", "b": "/srv/b"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{broken", "HXO_WORKSPACES is not valid JSON"),
        ('{"demo": 1}', "HXO_WORKSPACES must map names to strings"),
        ("demo", "HXO_WORKSPACES must be name=value pairs"),
        ("demo=", "HXO_WORKSPACES must be name=value pairs"),
    ],
)
def test_env_mapping_refuses_bad_values_naming_the_variable(monkeypatch, raw, message):
    monkeypatch.setenv("HXO_WORKSPACES", raw)

    with pytest.raises(ImproperlyConfigured, match=message):
        env_mapping("HXO_WORKSPACES", {})


# --- The settings module as a whole (run afresh, without touching the live settings) -----


def load_settings() -> dict:
    return runpy.run_path(hxo_settings.__file__)


def test_secret_key_is_required_when_debug_is_off(monkeypatch):
    monkeypatch.setenv("DEBUG", "0")
    monkeypatch.delenv("SECRET_KEY", raising=False)

    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        load_settings()


def test_debug_runs_without_a_secret_key(monkeypatch):
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.delenv("SECRET_KEY", raising=False)

    assert load_settings()["SECRET_KEY"]


def test_a_bad_database_url_names_the_variable(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "nosuchdb://x")

    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        load_settings()


def test_database_url_switches_to_postgresql(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hxo")

    db = load_settings()["DATABASES"]["default"]

    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert db["NAME"] == "hxo"


def test_sqlite_by_default_with_wal_immediate_transactions_and_a_busy_timeout(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)

    options = load_settings()["DATABASES"]["default"]["OPTIONS"]

    assert options["transaction_mode"] == "IMMEDIATE"
    assert options["timeout"] > 0
    assert "journal_mode=WAL" in options["init_command"]


def test_sqlite_keeps_connections_for_hxo_conn_max_age_as_postgresql_does(monkeypatch):
    # django-q2's pusher closes old connections before every poll: with 0 it reconnected
    # twenty times a second (bench/profiles/engine.md).
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("HXO_CONN_MAX_AGE", raising=False)
    assert load_settings()["DATABASES"]["default"]["CONN_MAX_AGE"] == 60

    monkeypatch.setenv("HXO_CONN_MAX_AGE", "0")  # what bin/hxo-run sets for runserver
    assert load_settings()["DATABASES"]["default"]["CONN_MAX_AGE"] == 0


def test_the_redis_broker_uses_redis_url(monkeypatch):
    monkeypatch.setenv("HXO_BROKER", "redis")
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/3")

    q_cluster = load_settings()["Q_CLUSTER"]

    assert q_cluster["redis"] == "redis://cache.internal:6379/3"
    assert "orm" not in q_cluster


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DEBUG", "perhaps"),
        ("HXO_BROKER", "kafka"),
        ("HXO_WORKERS", "many"),
        ("HXO_MAX_STAGES", "0"),
        ("HXO_SECURE_COOKIES", "sometimes"),
        ("HXO_LOG_LEVEL", "loud"),
        ("HXO_PUBLIC_URL", "ftp://hxo.example.com"),
        ("HXO_WEBHOOK_TIMEOUT_S", "0"),
        ("HXO_WEBHOOK_MAX_ATTEMPTS", "0"),
        ("HXO_NOTIFY_EMAIL", "maybe"),
        ("EMAIL_PORT", "smtp"),
    ],
)
def test_a_bad_value_stops_the_settings_naming_the_variable(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)

    with pytest.raises(ImproperlyConfigured, match=name):
        load_settings()


def test_the_django_q_retry_outlasts_the_timeout():
    # docs/architecture.md, "django-q2 facts": retry > timeout + 3 s, or a task is run twice
    # concurrently.
    q = django_settings.Q_CLUSTER

    assert q["retry"] > q["timeout"] + 3
    assert q["ack_failures"] is True
    assert q["catch_up"] is False


# --- HXO_PARTITION_TIMEOUT_MS and its deprecated alias HXO_SHARD_TIMEOUT_MS ---------------


def test_the_partition_timeout_defaults_when_neither_name_is_set(monkeypatch, caplog):
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.delenv("HXO_PARTITION_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("HXO_SHARD_TIMEOUT_MS", raising=False)

    assert load_settings()["HXO_PARTITION_TIMEOUT_MS"] == 300_000
    assert "deprecated" not in caplog.text


def test_the_partition_timeout_reads_its_own_name(monkeypatch, caplog):
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setenv("HXO_PARTITION_TIMEOUT_MS", "1234")
    monkeypatch.delenv("HXO_SHARD_TIMEOUT_MS", raising=False)

    assert load_settings()["HXO_PARTITION_TIMEOUT_MS"] == 1234
    assert "deprecated" not in caplog.text


def test_only_the_old_shard_timeout_name_set_is_used_with_one_warning(monkeypatch, caplog):
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.delenv("HXO_PARTITION_TIMEOUT_MS", raising=False)
    monkeypatch.setenv("HXO_SHARD_TIMEOUT_MS", "4321")

    with caplog.at_level("WARNING", logger="hxo.settings"):
        values = load_settings()

    assert values["HXO_PARTITION_TIMEOUT_MS"] == 4321
    warnings = [r for r in caplog.records if r.name == "hxo.settings"]
    assert len(warnings) == 1
    assert "HXO_SHARD_TIMEOUT_MS is deprecated" in warnings[0].getMessage()
    assert "HXO_PARTITION_TIMEOUT_MS" in warnings[0].getMessage()


def test_with_both_timeout_names_set_the_new_one_wins_without_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("DEBUG", "1")
    monkeypatch.setenv("HXO_PARTITION_TIMEOUT_MS", "1000")
    monkeypatch.setenv("HXO_SHARD_TIMEOUT_MS", "9000")

    with caplog.at_level("WARNING", logger="hxo.settings"):
        values = load_settings()

    assert values["HXO_PARTITION_TIMEOUT_MS"] == 1000
    assert not [r for r in caplog.records if r.name == "hxo.settings"]


def test_the_old_timeout_name_is_checked_as_loudly_as_the_new_one(monkeypatch):
    monkeypatch.delenv("HXO_PARTITION_TIMEOUT_MS", raising=False)
    monkeypatch.setenv("HXO_SHARD_TIMEOUT_MS", "soon")

    with pytest.raises(ImproperlyConfigured, match="HXO_SHARD_TIMEOUT_MS must be an integer"):
        env_int_renamed("HXO_PARTITION_TIMEOUT_MS", "HXO_SHARD_TIMEOUT_MS", 300_000)


def test_webhook_hosts_are_a_lower_case_list_and_the_public_url_loses_its_slash(monkeypatch):
    monkeypatch.setenv("HXO_WEBHOOK_ALLOWED_HOSTS", " Hooks.Slack.com, .webhook.office.com ,")
    monkeypatch.setenv("HXO_PUBLIC_URL", "https://hxo.example.com/")

    loaded = load_settings()

    assert loaded["HXO_WEBHOOK_ALLOWED_HOSTS"] == ["hooks.slack.com", ".webhook.office.com"]
    assert loaded["HXO_PUBLIC_URL"] == "https://hxo.example.com"
