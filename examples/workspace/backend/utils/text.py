"""Text normalisation shared by validation and the email-domain backfill."""

from __future__ import annotations

import re
import unicodedata

_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(value: str) -> str:
    ascii_value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return _SLUG.sub("-", ascii_value.lower()).strip("-")


def normalize_email(email: str) -> str:
    local, _, domain = email.strip().rpartition("@")
    return f"{local}@{domain.lower()}"


def email_domain(email: str) -> str:
    """The domain of an address, lower-cased: what the customers backfill stores."""
    return email.strip().rpartition("@")[2].lower()
