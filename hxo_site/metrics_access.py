"""Who may read `GET /metrics`: a Prometheus server, by a bearer token or by its address.

Metrics name plans' job kinds and the volume of work, so they are not public. Prometheus
sends `Authorization: Bearer <token>` (`authorization` in its scrape config), or scrapes
from known hosts; either is enough. The token is compared in constant time.

Refusals: with neither `HXO_METRICS_TOKEN` nor `HXO_METRICS_ALLOWED_IPS` set the endpoint is
off and answers 404 (as an unknown URL would); once configured, a scrape without the token from
another address answers 403, so a misconfigured Prometheus sees "forbidden", not "no such
page", in its target list.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.conf import settings

from hxo_site.net import client_ip

ALLOWED = "allowed"
OFF = "off"
FORBIDDEN = "forbidden"


def metrics_access(request: Any) -> str:
    """`ALLOWED`, `OFF` (not configured: answer 404) or `FORBIDDEN` (answer 403) for a Django
    `HttpRequest`. The client's address is `hxo_site.net.client_ip` (the trusted proxy's
    X-Forwarded-For entry when `HXO_BEHIND_PROXY` is on)."""
    token: str = settings.HXO_METRICS_TOKEN
    networks = settings.HXO_METRICS_ALLOWED_IPS
    if not token and not networks:
        return OFF
    if token:
        scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return ALLOWED
    if networks:
        address = _address(client_ip(request))
        if address is not None and any(address in net for net in networks):
            return ALLOWED
    return FORBIDDEN


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:10.0.0.5) matches IPv4 networks.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address
