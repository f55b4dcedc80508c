"""Where a request came from: the one reading of the client's address.

Audit events, throttles and the admin all record `client_ip(request)`, so that behind the
proxy an audit event written by a service and a throttle's audit name the same client.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


def client_ip(request: Any) -> str | None:
    """The client's address (text, IPv4 or IPv6), or None when the request has none.

    REMOTE_ADDR; or, behind the one trusted proxy (HXO_BEHIND_PROXY), the last
    X-Forwarded-For entry, the one that proxy added. Earlier entries are whatever the client
    sent, so trusting them would let anyone pick a fresh throttle key per guess, or write any
    address into the audit log. `request` is a Django `HttpRequest` or a DRF `Request`.
    """
    meta = request.META
    if settings.HXO_BEHIND_PROXY:
        forwarded = [a.strip() for a in meta.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if forwarded and forwarded[-1]:
            return forwarded[-1]
    return meta.get("REMOTE_ADDR")
