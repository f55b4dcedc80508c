"""HXO settings: one module, driven by environment variables with safe defaults.

Every variable is listed in the README. A bad value raises ImproperlyConfigured naming the
variable, so a misconfigured host fails at start-up rather than at the first job.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent

# `.env` beside manage.py (HXO_ENV_FILE names another; empty: none): `make setup` writes one for
# development with DEBUG=1 and a random SECRET_KEY, so a fresh shell's `manage.py ...` works and
# shares the web server's and the workers' key (django-q2 drops tasks signed with another). The
# process environment wins over the file, so production hosts set variables as before.
ENV_FILE = os.environ.get("HXO_ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE:
    load_dotenv(ENV_FILE, override=False)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_int_renamed(name: str, old_name: str, default: int, *, minimum: int | None = None) -> int:
    """`env_int(name)`, reading the deprecated `old_name` when only that one is set (with one
    warning, so the host's configuration gets updated); when both are set, `name` wins."""
    if os.environ.get(name, "").strip() == "" and os.environ.get(old_name, "").strip() != "":
        logging.getLogger("hxo.settings").warning(
            "%s is deprecated: set %s instead (used %s for now)", old_name, name, old_name
        )
        return env_int(old_name, default, minimum=minimum)
    return env_int(name, default, minimum=minimum)


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_networks(name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or networks (`10.0.0.5, 10.1.0.0/16, ::1`), comma-separated; empty: none."""
    raw = os.environ.get(name, "")
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must be IP addresses or networks separated by commas, got {item!r}"
            ) from None
    return tuple(networks)


def env_mapping(name: str, default: dict[str, str]) -> dict[str, str]:
    """A name → value mapping, as JSON (`{"demo": "/srv/demo"}`) or `name=value,name=value`."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return dict(default)
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            raise ImproperlyConfigured(f"{name} must map names to strings")
        return parsed
    result: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ImproperlyConfigured(f"{name} must be name=value pairs separated by commas")
        result[key.strip()] = value.strip()
    return result


def env_targets(name: str, default: dict[str, str]) -> dict[str, Any]:
    """Database targets: `env_mapping`'s two forms, and in JSON a target may also be an
    object `{"url": "...", "sensitive": ["email"], "health": {...}}` (columns whose values a
    review masks; database health checks, whose keys `runs_app.targets.get_target` checks)."""
    raw = os.environ.get(name, "").strip()
    if not raw.startswith("{"):
        return env_mapping(name, default)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ImproperlyConfigured(f"{name} must map names to URLs or objects")
    for key, value in parsed.items():
        if isinstance(value, str):
            continue
        ok = (
            isinstance(value, dict)
            and set(value) <= {"url", "sensitive", "health"}
            and isinstance(value.get("health", {}), dict)
            and isinstance(value.get("url"), str)
            and bool(value["url"])
            and isinstance(value.get("sensitive", []), list)
            and all(isinstance(c, str) and c for c in value.get("sensitive", []))
        )
        if not ok:
            raise ImproperlyConfigured(
                f'{name}[{key!r}] must be a URL or {{"url": "...", "sensitive": [column names], '
                '"health": {checks}}'
            )
    return parsed


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off. In development run `make setup`, which "
            f"writes {BASE_DIR / '.env'} with DEBUG=1 and a random SECRET_KEY (or set DEBUG=1). "
            "In production set SECRET_KEY to a long random value (python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))'), the same on every web and worker host of a "
            "cluster: workers drop tasks signed with another key."
        )
    # A development-only key: every process of one checkout shares it, which django-q2 needs
    # (payloads signed with another key are dropped).
    SECRET_KEY = "hxo-development-only-key-not-for-production"

ALLOWED_HOSTS = [
    h.strip() for h in env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
]
if DEBUG:
    ALLOWED_HOSTS.append("testserver")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS").split(",") if o]

VAR_DIR = Path(env_str("HXO_VAR_DIR", str(BASE_DIR / "var"))).resolve()
# SQLite cannot create its file in a missing directory; var/ is not in a fresh clone.
VAR_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "django_htmx",
    "template_partials",
    # hxo_site first: the plumbing both apps import (audit log, errors, auth, middleware).
    "hxo_site",
    "blueprints_app",
    # Below runs_app: it knows nothing of runs (runs_app.notifications emits into it).
    "notify_app",
    "runs_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "hxo_site.middleware.SecurityHeadersMiddleware",
    # Before anything reads a body: an oversized one is refused unread (413).
    "hxo_site.middleware.RequestSizeLimitMiddleware",
    "hxo_site.middleware.UrlTextMiddleware",
    # A transaction that gave up on a busy database: 503 with Retry-After, not a 500.
    "hxo_site.middleware.DatabaseBusyMiddleware",
    "hxo_site.middleware.ApiJsonBodyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "hxo_site.middleware.RefusalAuditMiddleware",
    # Sees the response of every view: an htmx request sent to log in gets HX-Redirect.
    "hxo_site.middleware.HtmxLoginRedirectMiddleware",
]

ROOT_URLCONF = "hxo_site.urls"
WSGI_APPLICATION = "hxo_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

# --- Databases ---------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    import dj_database_url

    try:
        _db = dj_database_url.parse(
            DATABASE_URL,
            # Persistent connections suit one-thread-per-process servers (gunicorn's sync
            # workers, qcluster workers). Under runserver every request thread would keep its
            # own for this long: bin/hxo-run sets 0 for runserver.
            conn_max_age=env_int("HXO_CONN_MAX_AGE", 60, minimum=0),
            conn_health_checks=True,
        )
    except Exception as exc:  # dj_database_url raises several types for bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db.setdefault("OPTIONS", {})
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "hxo.sqlite3",
        # The test database is a file, not :memory:, so that worker processes started by
        # the tests see the same data (django-q2 notes, "Testing").
        "TEST": {"NAME": str(VAR_DIR / "test_hxo.sqlite3")},
        # Kept like PostgreSQL's (above): django-q2's ORM broker closes old connections before
        # every poll of its pusher (20 a second), so with 0 each poll reconnected and ran the
        # PRAGMAs below: 0.05-0.09 CPU-s per second of an idle cluster, 0.017 kept
        # (bench/profiles/engine.md). Workers and the monitor keep theirs between tasks too.
        "CONN_MAX_AGE": env_int("HXO_CONN_MAX_AGE", 60, minimum=0),
    }
# Lets concurrent test sessions (several checkouts, parallel CI jobs) use separate test
# databases; worker processes started by a test inherit the variable and find the same one.
_test_suffix = env_str("HXO_TEST_DB_SUFFIX")
if _test_suffix:
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["TEST"] = {"NAME": str(VAR_DIR / f"test_hxo_{_test_suffix}.sqlite3")}
    else:
        _db["TEST"] = {"NAME": f"test_hxo_{_test_suffix}"}
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so a read-then-write never fails
    # the lock upgrade ("database is locked", django-q2 #144); WAL lets readers go on.
    _db.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DATABASES: dict[str, Any] = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Caches ------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
HXO_BROKER = env_choice("HXO_BROKER", "orm", ("orm", "redis"))
CACHES: dict[str, Any] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # django-q2 keeps cluster stats here; it must be shared between processes and must not
    # be the database cache on SQLite (heartbeat writes every 0.5 s, django-q2 #321).
    "hxo-q": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache" / "q"),
    },
    # Login and token-endpoint throttles (hxo_site.throttling): shared by the processes
    # of a host here, by every host through Redis in scaled mode.
    "hxo-throttle": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache" / "throttle"),
    },
    # The module registry written by warm_registry (deploy.prime) is a table
    # (runs_app.RegistryEntry), not a cache: a cache evicts (the file cache culls at 300).
}
if HXO_BROKER == "redis":
    for _alias in ("hxo-q", "hxo-throttle"):
        CACHES[_alias] = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": _alias,
            "TIMEOUT": 300,
        }

# --- django-q2 (docs/architecture.md: the queue only wakes, our tables are the truth) ---
HXO_WORKERS = env_int("HXO_WORKERS", 2, minimum=1)
HXO_Q_TIMEOUT_S = env_int("HXO_Q_TIMEOUT_S", 300, minimum=10)
Q_CLUSTER: dict[str, Any] = {
    "name": env_str("HXO_CLUSTER_NAME", "hxo"),
    "workers": HXO_WORKERS,
    "queue_limit": HXO_WORKERS,
    "bulk": 1,
    # A drainer stops well before timeout (HXO_DRAIN_BUDGET_S); retry > timeout + 3 s + the
    # internal queue's wait, so django-q2 never runs a drainer twice concurrently by itself.
    "timeout": HXO_Q_TIMEOUT_S,
    "retry": HXO_Q_TIMEOUT_S * 2 + 30,
    "max_attempts": 2,
    "ack_failures": True,
    "catch_up": False,
    "recycle": 200,
    "save_limit": 250,
    # The ORM broker polls its queue when idle; a short poll keeps wake-up latency low and
    # costs one indexed read per interval.
    "poll": 0.05,
    "cache": "hxo-q",
    "label": "Task queue",
}
if HXO_BROKER == "redis":
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- HXO ---------------------------------------------------------------------------------
HXO_MAX_STAGES = env_int("HXO_MAX_STAGES", 50, minimum=1)
HXO_MAX_PARTITIONS = env_int("HXO_MAX_PARTITIONS", 100_000, minimum=1)
HXO_MAX_CONCURRENCY = env_int("HXO_MAX_CONCURRENCY", 4, minimum=1)
# The longest one partition may run; HXO_SHARD_TIMEOUT_MS is its deprecated old name.
HXO_PARTITION_TIMEOUT_MS = env_int_renamed(
    "HXO_PARTITION_TIMEOUT_MS", "HXO_SHARD_TIMEOUT_MS", 300_000, minimum=100
)
HXO_MAX_ATTEMPTS = env_int("HXO_MAX_ATTEMPTS", 3, minimum=1)
# Docs search: the most characters of headings and body indexed per page (the rest of a
# longer page is not searchable; DocPage.truncated records the cut), and the longest one
# search request may query the database before it answers 503 search_timeout.
HXO_DOCS_MAX_INDEXED_CHARS = env_int("HXO_DOCS_MAX_INDEXED_CHARS", 1_000_000, minimum=1_000)
HXO_SEARCH_TIMEOUT_MS = env_int("HXO_SEARCH_TIMEOUT_MS", 2_000, minimum=1)
HXO_RETRY_BACKOFF_MS = env_int("HXO_RETRY_BACKOFF_MS", 1_000, minimum=0)
HXO_LEASE_MS = env_int("HXO_LEASE_MS", 30_000, minimum=500)
HXO_DRAIN_BUDGET_S = env_int("HXO_DRAIN_BUDGET_S", 60, minimum=1)
# The receipt asks executors whether each recorded effect still exists; it stops after this
# many seconds and then cannot say verified (runs_app.selectors.receipt).
HXO_RECEIPT_EFFECTS_BUDGET_S = env_int("HXO_RECEIPT_EFFECTS_BUDGET_S", 20, minimum=1)
HXO_RECONCILE_EVERY_MIN = env_int("HXO_RECONCILE_EVERY_MIN", 1, minimum=1)
HXO_ALLOW_SELF_APPROVAL = env_bool("HXO_ALLOW_SELF_APPROVAL", False)
# An approval covers an apply started within this many hours of it (runs_app.policies).
HXO_APPROVAL_TTL_HOURS = env_int("HXO_APPROVAL_TTL_HOURS", 72, minimum=1)
HXO_MAX_BODY_BYTES = env_int("HXO_MAX_BODY_BYTES", 1_048_576, minimum=1024)
HXO_TOKEN_TTL_DAYS = env_int("HXO_TOKEN_TTL_DAYS", 90, minimum=1)
HXO_LOGIN_MAX_FAILURES = env_int("HXO_LOGIN_MAX_FAILURES", 10, minimum=1)
HXO_LOGIN_WINDOW_S = env_int("HXO_LOGIN_WINDOW_S", 300, minimum=1)
HXO_TOKEN_RATE = env_str("HXO_TOKEN_RATE", "10/minute").strip()
if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", HXO_TOKEN_RATE):
    raise ImproperlyConfigured(
        f"HXO_TOKEN_RATE must be <number>/<second|minute|hour|day>, got {HXO_TOKEN_RATE!r}"
    )
HXO_BEHIND_PROXY = env_bool("HXO_BEHIND_PROXY", False)
# GET /metrics (Prometheus): allowed with `Authorization: Bearer <HXO_METRICS_TOKEN>`, or from
# an address in HXO_METRICS_ALLOWED_IPS (addresses or networks, comma-separated, read through
# hxo_site.net.client_ip). Neither set: the endpoint is off (404). See hxo_site/metrics_access.py.
HXO_METRICS_TOKEN = env_str("HXO_METRICS_TOKEN", "").strip()
HXO_METRICS_ALLOWED_IPS = env_networks("HXO_METRICS_ALLOWED_IPS")
HXO_WORKSPACES = {
    name: str(Path(path).resolve())
    for name, path in env_mapping(
        "HXO_WORKSPACES", {"demo": str(BASE_DIR / "examples" / "workspace")}
    ).items()
}
HXO_DATABASE_TARGETS = env_targets(
    "HXO_DATABASE_TARGETS", {"demo": f"sqlite:///{VAR_DIR / 'demo_target.sqlite3'}"}
)
# A target whose role is a PostgreSQL superuser is refused (`superuser_target`): a superuser
# can read the server's files, run programs and reach every database. Give HXO a role with
# only the rights its migrations need; this override is for throwaway development servers.
HXO_ALLOW_SUPERUSER_TARGETS = env_bool("HXO_ALLOW_SUPERUSER_TARGETS", False)
# A dry-run waits at most this long for a lock on the target (never longer than the stage's
# own lock_timeout_ms), so reviewing DDL cannot block the target's writers for long.
HXO_DRY_RUN_LOCK_TIMEOUT_MS = env_int("HXO_DRY_RUN_LOCK_TIMEOUT_MS", 1_000, minimum=10)
# A dry-run's statements each run at most this long (never longer than the stage's own
# statement_timeout_ms), and a dry-run batch (earlier batches replayed included) at most
# HXO_DRY_RUN_BATCH_TIMEOUT_MS in all: a lock a dry-run took is held no longer than that.
HXO_DRY_RUN_STATEMENT_TIMEOUT_MS = env_int("HXO_DRY_RUN_STATEMENT_TIMEOUT_MS", 10_000, minimum=100)
HXO_DRY_RUN_BATCH_TIMEOUT_MS = env_int("HXO_DRY_RUN_BATCH_TIMEOUT_MS", 30_000, minimum=100)
HXO_ARTIFACTS_DIR = Path(env_str("HXO_ARTIFACTS_DIR", str(VAR_DIR / "artifacts"))).resolve()
HXO_STAGING_DIR = Path(env_str("HXO_STAGING_DIR", str(VAR_DIR / "staging"))).resolve()
# deploy.prime's prime_caches writes bytecode here, one directory per workspace, so priming
# never writes into a workspace.
HXO_BYTECODE_DIR = Path(env_str("HXO_BYTECODE_DIR", str(VAR_DIR / "cache" / "bytecode"))).resolve()
# Interpreters deploy.prime may compile bytecode with (runs_app.kinds.pyinterp): paths
# separated by ":"; unset, every python3.N on PATH and under pyenv, and the running one.
HXO_PYTHON_INTERPRETERS: list[str] | None = (
    [p for p in env_str("HXO_PYTHON_INTERPRETERS").split(":") if p]
    if env_str("HXO_PYTHON_INTERPRETERS")
    else None
)

# --- Notifications (notify_app; README, "Notifications") ---------------------------------
# The address people reach HXO at: links in webhooks and emails point under it.
HXO_PUBLIC_URL = env_str("HXO_PUBLIC_URL", "http://localhost:8000").strip().rstrip("/")
if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", HXO_PUBLIC_URL):
    raise ImproperlyConfigured(f"HXO_PUBLIC_URL must be an http(s) URL, got {HXO_PUBLIC_URL!r}")
# Webhook hosts HXO may post to (comma-separated; ".example.com" admits its subdomains);
# empty: any host an admin registers (webhooks are requests from inside the network).
HXO_WEBHOOK_ALLOWED_HOSTS = [
    h.strip().lower() for h in env_str("HXO_WEBHOOK_ALLOWED_HOSTS").split(",") if h.strip()
]
HXO_WEBHOOK_TIMEOUT_S = env_int("HXO_WEBHOOK_TIMEOUT_S", 5, minimum=1)
HXO_WEBHOOK_MAX_ATTEMPTS = env_int("HXO_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
HXO_WEBHOOK_BACKOFF_S = env_int("HXO_WEBHOOK_BACKOFF_S", 30, minimum=0)
HXO_NOTIFY_EVERY_MIN = env_int("HXO_NOTIFY_EVERY_MIN", 1, minimum=1)
# Email the approvers when a dry-run waits for them.
HXO_NOTIFY_EMAIL = env_bool("HXO_NOTIFY_EMAIL", True)
# Django's email settings; the console backend prints messages (development). Production:
# django.core.mail.backends.smtp.EmailBackend with EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER,
# EMAIL_HOST_PASSWORD, EMAIL_USE_TLS.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "HXO <hxo@localhost>")

STORAGES: dict[str, Any] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    # Archives written by deploy.pack, content-addressed.
    "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(HXO_ARTIFACTS_DIR)},
    },
    # Copies written by assets.stage, content-addressed.
    "staging": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(HXO_STAGING_DIR)},
    },
}

# Shared storage for scaled mode without a shared file system: replaces the "artifacts" and
# "staging" entries above, e.g. with an S3-compatible bucket through django-storages (README,
# "Scaling out / production"). JSON: {"artifacts": {"BACKEND": "...", "OPTIONS": {...}}}.
_raw_storages = env_str("HXO_STORAGES").strip()
if _raw_storages:
    try:
        _storages = json.loads(_raw_storages)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"HXO_STORAGES is not valid JSON: {exc}") from None
    if not isinstance(_storages, dict) or not all(
        alias in ("artifacts", "staging")
        and isinstance(spec, dict)
        and isinstance(spec.get("BACKEND"), str)
        and isinstance(spec.get("OPTIONS", {}), dict)
        for alias, spec in _storages.items()
    ):
        raise ImproperlyConfigured(
            'HXO_STORAGES must map "artifacts" and/or "staging" to {"BACKEND": "...", '
            '"OPTIONS": {...}}'
        )
    STORAGES.update(_storages)

# --- REST API ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: DRF takes the 401 challenge (WWW-Authenticate) from the first class, so
    # anonymous API requests get 401 rather than 403. Sessions (browser, CSRF) still work.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "hxo_site.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "hxo_site.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    # drf-spectacular's AutoSchema, also documenting the refusals every view can give.
    "DEFAULT_SCHEMA_CLASS": "hxo_site.schema.HxoAutoSchema",
    "EXCEPTION_HANDLER": "hxo_site.api_errors.exception_handler",
    # JSON only: malformed, over-deep and unstorable bodies are 400s with a code, not 500s.
    "DEFAULT_PARSER_CLASSES": ["hxo_site.parsers.SafeJSONParser"],
    # DRF's test client would post multipart, which the API does not take.
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # DRF's own throttles key on REMOTE_ADDR, or on the address the one trusted proxy saw:
    # never on an X-Forwarded-For the client wrote itself (HXO's read it with hxo_site.net).
    "NUM_PROXIES": 1 if HXO_BEHIND_PROXY else 0,
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HXO API",
    "DESCRIPTION": "Plan, review, approve and apply partitioned operational jobs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from the sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # A run's state is in two components (a run, and a run with its change summary): named
    # here, or drf-spectacular names the shared enum by a hash and warns.
    "ENUM_NAME_OVERRIDES": {
        "RunStateEnum": "runs_app.models.RunState",
        # A run's state as the API shows it: `paused` for a paused running run.
        "RunPublicStateEnum": "runs_app.models.RUN_PUBLIC_STATES",
    },
}

# --- Auth, static, i18n --------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticroot"
DATA_UPLOAD_MAX_MEMORY_SIZE = HXO_MAX_BODY_BYTES
# The plan editor posts about 20 fields per stage: a plan at the stage limit must fit.
DATA_UPLOAD_MAX_NUMBER_FIELDS = max(1000, HXO_MAX_STAGES * 100)

SESSION_COOKIE_SECURE = env_bool("HXO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("HXO_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HXO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("HXO_HSTS_PRELOAD", False)
# Off by default so that plain-HTTP development and tests work; production turns it on, or
# lets the TLS-terminating proxy redirect.
SECURE_SSL_REDIRECT = env_bool("HXO_SSL_REDIRECT", False)
if HXO_BEHIND_PROXY:
    # Only behind a proxy that sets this header itself: otherwise a client could claim HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Audits a signed-in user's state-changing request refused for a missing CSRF token.
CSRF_FAILURE_VIEW = "hxo_site.middleware.csrf_failure"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {
        "handlers": ["console"],
        "level": env_choice(
            "HXO_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
        ).upper(),
    },
    "filters": {"bad_signature": {"()": "hxo_site.log_filters.BadSignatureHint"}},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # django-q2 logs a task it cannot verify as a bare traceback; this says why.
        "django-q": {"filters": ["bad_signature"]},
    },
}

# Extra modules that register partitioners and executors (custom job kinds).
HXO_PLUGINS = [m.strip() for m in env_str("HXO_PLUGINS").split(",") if m.strip()]
