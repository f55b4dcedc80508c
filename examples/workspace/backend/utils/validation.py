"""Field validators raising ValidationFailed with the field's name."""

from __future__ import annotations

import re

from backend.core.errors import ValidationFailed
from backend.utils.text import normalize_email

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
COUNTRIES = {"AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "NL", "PL", "PT", "SE"}


def require_text(value: str, field: str, *, max_length: int = 200) -> str:
    value = (value or "").strip()
    if not value:
        raise ValidationFailed(f"{field} is required", field=field)
    if len(value) > max_length:
        raise ValidationFailed(f"{field} is longer than {max_length} characters", field=field)
    return value


def require_email(value: str, field: str = "email") -> str:
    value = normalize_email(require_text(value, field))
    if not _EMAIL.match(value):
        raise ValidationFailed(f"{value!r} is not an email address", field=field)
    return value


def require_country(value: str, field: str = "country") -> str:
    code = require_text(value, field, max_length=2).upper()
    if code not in COUNTRIES:
        raise ValidationFailed(f"we do not ship to {code}", field=field)
    return code


def require_positive(value: int, field: str) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ValidationFailed(f"{field} must be a positive whole number", field=field)
    return value
