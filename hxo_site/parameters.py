"""Values from query strings and form fields: ids, integers and filter values, parsed once.

Every id or integer that a URL or a form carries goes through `parse_int`/`parse_id`: ASCII
digits only, bounded by what the database holds. `str.isdigit()` is not that test: it accepts
'²' (which `int()` refuses: a 500) and '٣' (which `int()` reads as 3). Filters go through
`one`, `choice`, `optional_id` and `text`: a parameter given twice is refused rather than
silently keeping its last value (one value per filter parameter; the OpenAPI document and the
README say so), and a value that cannot match anything is refused rather than ignored (which
returned every row).

A bad value raises `ParameterError`, a 400 wherever it surfaces: the API's exception handler
answers `{"detail", "code": "invalid_value", "errors": [{"path": <name>, ...}]}`, and it
is a `BadRequest`, so an HTML view that does not catch it still answers 400, never 500.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from django.core.exceptions import BadRequest

from hxo_site import codes

INT64_MAX = 2**63 - 1
_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
MAX_DIGITS = 19  # INT64_MAX has 19 digits; longer text is out of range without int()


class QueryLike(Protocol):
    def getlist(self, key: str) -> list[str]: ...


class ParameterError(BadRequest):
    """A query or form parameter that is not what it must be; `name` is the parameter."""

    def __init__(self, name: str, message: str, *, code: str = codes.INVALID_VALUE) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"path": self.name, "code": self.code, "message": self.message}


def parse_int(
    raw: Any,
    *,
    name: str,
    minimum: int = 0,
    maximum: int = INT64_MAX,
    signed: bool = False,
) -> int:
    """`raw` (text) as an int in [minimum, maximum], or ParameterError.

    Only ASCII digits (with an optional sign when `signed`), no spaces: what a URL or a form
    input holds for a number. The length is checked before `int()`, so a megabyte of digits
    costs nothing (and never meets int()'s 4300-digit limit).
    """
    text = raw if isinstance(raw, str) else ""
    pattern = _SIGNED if signed else _UNSIGNED
    if not pattern.fullmatch(text):
        raise ParameterError(name, f"{_show(raw)} is not a whole number (digits 0-9)")
    if len(text.lstrip("+-").lstrip("0")) > MAX_DIGITS:
        raise ParameterError(name, f"{_show(raw)} is out of range ({minimum}..{maximum})")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ParameterError(name, f"{value} is out of range ({minimum}..{maximum})")
    return value


def parse_id(raw: Any, *, name: str) -> int:
    """A database id (1..2^63-1) from text, or ParameterError."""
    return parse_int(raw, name=name, minimum=1)


def one(query: QueryLike, name: str) -> str | None:
    """The one value of parameter `name` (None when absent or empty); given twice → refused."""
    values = query.getlist(name)
    if len(values) > 1:
        raise ParameterError(name, f"give {name} at most once ({len(values)} values given)")
    if not values or values[0] == "":
        return None
    return values[0]


def optional_id(query: QueryLike, name: str) -> int | None:
    """The id in parameter `name` (`one`, then `parse_id`), or None when absent or empty."""
    raw = one(query, name)
    return None if raw is None else parse_id(raw, name=name)


def optional_int(
    query: QueryLike, name: str, *, minimum: int = 0, maximum: int = INT64_MAX
) -> int | None:
    """The integer in parameter `name` (`one`, then `parse_int`), or None when absent."""
    raw = one(query, name)
    return None if raw is None else parse_int(raw, name=name, minimum=minimum, maximum=maximum)


def choice(query: QueryLike, name: str, choices: Collection[str]) -> str | None:
    """One of `choices`, or None when absent; anything else is refused, naming the choices."""
    raw = one(query, name)
    if raw is None:
        return None
    if raw not in choices:
        allowed = ", ".join(sorted(choices)) or "none"
        raise ParameterError(name, f"{_show(raw)} is not one of: {allowed}")
    return raw


def text(query: QueryLike, name: str, *, max_length: int) -> str | None:
    """The text of parameter `name` (`one`), refused when longer than `max_length` (the
    column it is compared with: a longer value cannot match, so it is a mistake)."""
    raw = one(query, name)
    if raw is not None and len(raw) > max_length:
        raise ParameterError(name, f"at most {max_length} characters")
    return raw


def no_repeats(query: QueryLike, names: Collection[str]) -> None:
    """Refuse any of `names` given more than once (pagination and other one-value knobs)."""
    for name in names:
        one(query, name)


def form_repeats(data: Mapping[str, Any] | None, names: Collection[str]) -> list[ParameterError]:
    """The `names` given more than once in a bound form's data (a QueryDict), as errors."""
    found = []
    getlist = getattr(data, "getlist", None)
    if getlist is None:
        return found
    for name in names:
        try:
            one(data, name)  # type: ignore[arg-type]
        except ParameterError as exc:
            found.append(exc)
    return found


def _show(raw: Any) -> str:
    shown = repr(raw)
    return shown if len(shown) <= 40 else shown[:37] + "..."
