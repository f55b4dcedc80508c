"""Security headers on every kind of page, production settings that `check --deploy` finds
nothing wrong with, and secure cookies whenever DEBUG is off."""

from __future__ import annotations

import os
import runpy
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from hxo_site import settings as hxo_settings

BASE = Path(django_settings.BASE_DIR)

PAGES = ["/login/", "/", "/plans/", "/api/v1/plans/", "/api/docs/", "/api/schema/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_every_page_carries_the_security_headers(path: str, operator) -> None:
    client = Client()
    client.force_login(operator)

    response = client.get(path)

    assert response.status_code < 500
    csp = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no inline scripts, no eval
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "unsafe" not in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "camera=()" in response["Permissions-Policy"]
    assert "Strict-Transport-Security" not in response  # only when configured


@pytest.mark.django_db
def test_refusals_and_errors_carry_the_headers_too(settings) -> None:
    settings.HXO_MAX_BODY_BYTES = 2048
    response = Client().post("/api/v1/plans/", b"x" * 4096, content_type="application/json")
    assert response.status_code == 413
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]


@pytest.mark.django_db
def test_hsts_is_sent_over_https_when_configured(settings) -> None:
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_HSTS_PRELOAD = True

    response = Client().get("/login/", secure=True)

    hsts = response["Strict-Transport-Security"]
    assert "max-age=31536000" in hsts and "includeSubDomains" in hsts and "preload" in hsts


@pytest.mark.django_db
def test_the_api_docs_page_runs_without_inline_code(client) -> None:
    page = client.get("/api/docs/").content.decode()
    assert "<script>" not in page and "<style>" not in page
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.content.decode()


def production_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HXO_", "DJANGO_")) and key not in ("DEBUG", "SECRET_KEY")
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "hxo_site.settings",
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "hxo.example.com",
            "CSRF_TRUSTED_ORIGINS": "https://hxo.example.com",
            "HXO_SSL_REDIRECT": "1",
            "HXO_BEHIND_PROXY": "1",
            "HXO_HSTS_SECONDS": "31536000",
            "HXO_HSTS_PRELOAD": "1",
            "HXO_WORKSPACES": '{"backend": "/srv/hxo/workspaces/backend"}',
            "HXO_DATABASE_TARGETS": '{"orders": "postgres://migrator@orders-db:5432/orders"}',
            **extra,
        }
    )
    return env


@pytest.mark.parametrize(
    "scaled",
    [
        {},
        {
            "DATABASE_URL": "postgres://hxo@db.internal:5432/hxo",
            "HXO_BROKER": "redis",
            "REDIS_URL": "redis://cache.internal:6379/0",
            "HXO_CLUSTER_NAME": "hxo-prod",
        },
    ],
    ids=["embedded", "scaled"],
)
def test_check_deploy_is_clean_with_production_settings(tmp_path: Path, scaled) -> None:
    # The README's production variables; `check --deploy` reads settings only, so the
    # database and Redis named here need not exist.
    env = production_env(HXO_VAR_DIR=str(tmp_path), **scaled)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_the_development_defaults(tmp_path: Path) -> None:
    env = production_env(HXO_VAR_DIR=str(tmp_path), HXO_SSL_REDIRECT="0", HXO_HSTS_SECONDS="0")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W008" in result.stderr


def test_cookies_are_secure_and_http_only_whenever_debug_is_off(monkeypatch) -> None:
    monkeypatch.setenv("DEBUG", "0")
    monkeypatch.setenv("SECRET_KEY", secrets.token_urlsafe(50))
    monkeypatch.delenv("HXO_SECURE_COOKIES", raising=False)

    loaded = runpy.run_path(hxo_settings.__file__)

    assert loaded["SESSION_COOKIE_SECURE"] is True
    assert loaded["CSRF_COOKIE_SECURE"] is True
    assert loaded["SESSION_COOKIE_HTTPONLY"] is True
    assert loaded["X_FRAME_OPTIONS"] == "DENY"


def test_behind_a_proxy_https_is_read_from_its_header_and_throttles_use_its_address(
    monkeypatch,
) -> None:
    monkeypatch.setenv("HXO_BEHIND_PROXY", "1")

    loaded = runpy.run_path(hxo_settings.__file__)

    assert loaded["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert loaded["REST_FRAMEWORK"]["NUM_PROXIES"] == 1


def test_without_a_proxy_no_forwarded_header_is_trusted(monkeypatch) -> None:
    monkeypatch.delenv("HXO_BEHIND_PROXY", raising=False)

    loaded = runpy.run_path(hxo_settings.__file__)

    assert "SECURE_PROXY_SSL_HEADER" not in loaded
    assert loaded["REST_FRAMEWORK"]["NUM_PROXIES"] == 0


@pytest.mark.parametrize("raw", ["ten/minute", "10", "10/week", "0/minute"])
def test_a_bad_token_rate_names_the_variable(monkeypatch, raw: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("HXO_TOKEN_RATE", raw)
    with pytest.raises(ImproperlyConfigured, match="HXO_TOKEN_RATE"):
        runpy.run_path(hxo_settings.__file__)


def test_shared_storage_can_be_an_s3_compatible_bucket(monkeypatch) -> None:
    monkeypatch.setenv(
        "HXO_STORAGES",
        '{"artifacts": {"BACKEND": "storages.backends.s3.S3Storage",'
        ' "OPTIONS": {"bucket_name": "hxo-artifacts", "file_overwrite": false}}}',
    )

    storages = runpy.run_path(hxo_settings.__file__)["STORAGES"]

    assert storages["artifacts"]["BACKEND"] == "storages.backends.s3.S3Storage"
    assert storages["artifacts"]["OPTIONS"]["bucket_name"] == "hxo-artifacts"
    assert storages["staging"]["BACKEND"].endswith("FileSystemStorage")  # untouched


@pytest.mark.parametrize(
    "raw",
    ["{broken", '["artifacts"]', '{"default": {"BACKEND": "x"}}', '{"artifacts": {"OPTIONS": {}}}'],
)
def test_a_bad_storages_value_names_the_variable(monkeypatch, raw: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("HXO_STORAGES", raw)
    with pytest.raises(ImproperlyConfigured, match="HXO_STORAGES"):
        runpy.run_path(hxo_settings.__file__)
