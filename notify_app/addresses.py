"""Which webhook URLs HXO may post to.

Webhooks are registered by admins only (the Django admin), so the URL is trusted input from a
trusted person; still, a webhook is a server-side request (SSRF): HXO posts from inside the
network to whatever the URL names. The rules here keep that narrow:

- `http` or `https` only, a host name, no user name or password in the URL (they would be sent
  in clear to every proxy and logged);
- when `HXO_WEBHOOK_ALLOWED_HOSTS` is set (comma-separated host names; `.example.com` also
  admits its subdomains), the host must be one of them. The check runs when a webhook is saved
  and again before every attempt, so narrowing the setting stops deliveries already queued;
- redirects are never followed (`notify_app.delivery`), so an allowed host cannot bounce a
  request to another one.

The idea of an allow list for outgoing webhooks follows GitLab's "outbound requests" setting.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

URL_SCHEME = "url_scheme"
URL_HOST = "url_host"
URL_CREDENTIALS = "url_credentials"
URL_HOST_NOT_ALLOWED = "url_host_not_allowed"


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Is `host` (lower-case, no port) admitted by `allowed`? An empty list admits any host;
    an entry `.example.com` admits `example.com` and every subdomain of it."""
    if not allowed:
        return True
    for entry in allowed:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry.startswith("."):
            if host == entry[1:] or host.endswith(entry):
                return True
        elif host == entry:
            return True
    return False


def validate_webhook_url(url: str) -> None:
    """Raise `ValidationError` (with one of this module's codes) unless HXO may post to `url`:
    http/https, a host, no credentials, and a host `HXO_WEBHOOK_ALLOWED_HOSTS` admits."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValidationError(f"not a valid URL: {exc}", code=URL_HOST) from None
    if parts.scheme not in {"http", "https"}:
        raise ValidationError("a webhook URL must start with http:// or https://", code=URL_SCHEME)
    if not host:
        raise ValidationError("a webhook URL must name a host", code=URL_HOST)
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            "put no user name or password in a webhook URL; use the signing secret",
            code=URL_CREDENTIALS,
        )
    if not host_allowed(host, settings.HXO_WEBHOOK_ALLOWED_HOSTS):
        raise ValidationError(
            f"{host} is not in HXO_WEBHOOK_ALLOWED_HOSTS", code=URL_HOST_NOT_ALLOWED
        )
