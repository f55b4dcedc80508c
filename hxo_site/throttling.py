"""Throttles against password guessing, shared by the login page and the token endpoint.

`LoginThrottle` counts failed logins per (client IP, username) in a window of
HXO_LOGIN_WINDOW_S seconds; at HXO_LOGIN_MAX_FAILURES the pair is locked out until the window
ends (the login page answers 429, the token endpoint too). Both login surfaces share one
counter, so a guesser gains nothing by switching between them. `TokenRateThrottle` is DRF's
scoped rate limit for the token endpoint as a whole (HXO_TOKEN_RATE per client IP).

Counters live in the `hxo-throttle` cache: a file cache shared by the processes of one host,
Redis in scaled mode, so that gunicorn workers and hosts see one count.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from rest_framework.throttling import ScopedRateThrottle

from hxo_site.audit import audit
from hxo_site.net import client_ip

CACHE_ALIAS = "hxo-throttle"
TOKEN_SCOPE = "auth-token"


def throttle_cache() -> BaseCache:
    return caches[CACHE_ALIAS]


class LoginThrottle:
    """Failed-login counter for one (client IP, username) pair."""

    def __init__(self, client_ip: str | None, username: str) -> None:
        self.client_ip = client_ip or "unknown"
        self.username = username.strip().casefold()[:150]
        # Hashed: usernames are user input and cache keys have a restricted alphabet.
        digest = hashlib.sha256(f"{self.client_ip}\x00{self.username}".encode()).hexdigest()
        self.key = f"login-failures:{digest}"
        self.audited_key = f"login-throttled:{digest}"

    @property
    def window_s(self) -> int:
        return settings.HXO_LOGIN_WINDOW_S

    def _state(self) -> tuple[int, float]:
        value = throttle_cache().get(self.key)
        if not isinstance(value, tuple | list) or len(value) != 2:
            return 0, time.time()
        return int(value[0]), float(value[1])

    def locked(self) -> bool:
        failures, _ = self._state()
        return failures >= settings.HXO_LOGIN_MAX_FAILURES

    def retry_after_s(self) -> int:
        _, started = self._state()
        return max(1, int(started + self.window_s - time.time()))

    def failed(self) -> None:
        # A fixed window from the first failure: (count, window start). Read-modify-write is
        # racy across processes, which at worst lets a few extra guesses through; it never
        # locks out a pair that stayed under the limit.
        failures, started = self._state()
        remaining = int(started + self.window_s - time.time())
        if failures == 0 or remaining <= 0:
            failures, started, remaining = 0, time.time(), self.window_s
        throttle_cache().set(self.key, (failures + 1, started), timeout=max(remaining, 1))

    def refuse(self, *, surface: str) -> None:
        """Audit the refusal, once per lockout: refused attempts would otherwise let anyone
        fill the audit log just by guessing."""
        if throttle_cache().add(self.audited_key, True, timeout=self.retry_after_s()):
            audit(
                actor=None,
                action="refused.login_throttled",
                object_type="user",
                object_id=self.username,
                client_ip=self.client_ip,
                detail={"surface": surface, "retry_after_s": self.retry_after_s()},
            )


class TokenRateThrottle(ScopedRateThrottle):
    """HXO_TOKEN_RATE requests per client IP to the token endpoint, in the shared cache."""

    scope_attr = "throttle_scope"

    @property
    def cache(self) -> BaseCache:  # type: ignore[override]
        # Looked up per request, not at import, so that settings (and tests) choose the cache.
        return throttle_cache()

    def get_rate(self) -> str:
        return settings.HXO_TOKEN_RATE

    def get_ident(self, request: Any) -> str:
        # The one reading of the client's address, as the login throttle and the audit use.
        return client_ip(request) or ""

    def allow_request(self, request: Any, view: Any) -> bool:
        # ScopedRateThrottle reads the scope from the view, then calls get_rate.
        self.scope = getattr(view, self.scope_attr, None) or TOKEN_SCOPE
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super(ScopedRateThrottle, self).allow_request(request, view)
