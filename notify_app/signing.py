"""The `X-HXO-Signature` header: HMAC-SHA256 over `<timestamp>.<body>`, as Stripe signs its
webhooks (`t=<unix seconds>,v1=<hex digest>`).

The timestamp is inside the signed text, so a receiver that also refuses old timestamps
(`tolerance_s`, five minutes by default) refuses a captured request replayed later; the
`X-HXO-Delivery` id lets it drop a genuine retry it already handled. Pure functions, stdlib
only: a receiver may copy `verify` as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `b"<timestamp>." + body` under `secret` (UTF-8)."""
    signed = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`: `t=<unix seconds>,v1=<hex>`; `timestamp` defaults to now."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},{SCHEME}={signature(secret, t, body)}"


def verify(
    secret: str,
    header_value: str,
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when `header_value` signs `body` under `secret` and its timestamp is within
    `tolerance_s` seconds of `now`. Compares in constant time; accepts several `v1=` entries
    (a sender rolling its secret may sign with both). Never raises on a malformed header."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in (header_value or "").split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == SCHEME and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
