"""Test-process environment, set before Django reads its settings.

DJANGO_SETTINGS_MODULE is set here rather than in pyproject.toml: pytest-django loads the
settings named in the ini file before any conftest runs, which would fail on the missing
SECRET_KEY (DEBUG is off in tests). Django is set up here so that the tests' conftests can
import models; pytest-django's own `pytest_configure` then only blocks stray database access.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hxo_site.settings")
# Tests do not read the developer's .env (DEBUG=1 there): they set what they need. A test of
# the .env itself points HXO_ENV_FILE at its own file in a subprocess.
os.environ.setdefault("HXO_ENV_FILE", "")
os.environ.setdefault("SECRET_KEY", "hxo-tests-only-secret-key")
os.environ.setdefault("HXO_SECURE_COOKIES", "0")
# One test database per test session, so parallel sessions never share one.
os.environ.setdefault("HXO_TEST_DB_SUFFIX", str(os.getpid()))
# ...and one django-q2 cluster name, which is the Redis queue's key: sessions never take each
# other's wake-ups.
os.environ.setdefault("HXO_CLUSTER_NAME", f"hxo-test-{os.getpid()}")

import django

django.setup()
