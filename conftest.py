"""Test-process environment, set before Django reads its settings."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "hxo-tests-only-secret-key")
os.environ.setdefault("HXO_SECURE_COOKIES", "0")
