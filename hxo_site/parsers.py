"""The API's one request parser: JSON that can neither crash a view nor poison the database.

DRF's JSONParser lets a deeply nested body raise RecursionError (a 500), and accepts what
PostgreSQL refuses to store: NUL characters and lone surrogates, which then fail deep inside a
save (another 500). This parser answers each of those with 400 and a code, before any view
code runs, so no endpoint has to remember to check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import IO, Any

from rest_framework.parsers import JSONParser

from hxo_site import codes
from hxo_site.errors import ApiError

# Deeper than anything HXO documents need (plans are refused past 32 levels by the validator,
# which reports the path); the ceiling keeps recursive code after the parser (JSON Schema
# validation, serializers) far from Python's recursion limit.
MAX_DEPTH = 64


def _refuse(message: str, code: str, path: str = "") -> ApiError:
    return ApiError(message, code=code, errors=[{"path": path, "code": code, "message": message}])


class JSONRefused(ValueError):
    """A JSON text HXO will not take: `code` (hxo_site.codes), `message`, and `path`, where
    in the document (`a.b[2]`; "" for the whole text)."""

    def __init__(self, message: str, *, code: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.path = path


class _DuplicateKeys(dict):
    """An object that named a key twice (the last value kept, as json.loads does); `loads`
    finds it by walking the document, so the refusal can say where it is."""

    duplicates: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    duplicates = []
    for key, value in pairs:
        if key in obj:
            duplicates.append(key)
        obj[key] = value
    if duplicates:
        marked = _DuplicateKeys(obj)
        marked.duplicates = duplicates
        return marked
    return obj


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(
            f"the number {text[:40]} is too large to store (past a double's range)",
            code=codes.PARSE_ERROR,
        )
    return value


def _constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259) and PostgreSQL's jsonb refuses them.
    raise JSONRefused(f"{name} is not valid JSON", code=codes.PARSE_ERROR)


def loads(text: str) -> Any:
    """`json.loads` with HXO's rules, the same for the API and the admin's JSON fields:
    duplicate keys (`{"a": 1, "a": 2}`: which one was meant?), NaN, Infinity and numbers
    past a double (`1e400`, which Python reads as inf and neither SQLite's JSON_VALID nor
    PostgreSQL's jsonb stores) are refused, as are NUL characters, lone surrogates and
    nesting deeper than MAX_DEPTH (`check_document`).

    Raises JSONRefused (code `parse_error` (non-finite numbers too, as ever), `duplicate_key`,
    `nesting_too_deep` or `invalid_characters`, with the path where it is known).
    """
    try:
        data = json.loads(
            text, object_pairs_hook=_pairs, parse_float=_finite, parse_constant=_constant
        )
    except JSONRefused:
        raise
    except RecursionError:
        # The C decoder recurses per nesting level: thousands of `[` exhaust the stack.
        raise JSONRefused(
            f"the JSON body is nested deeper than {MAX_DEPTH} levels", code=codes.NESTING_TOO_DEEP
        ) from None
    except ValueError as exc:  # JSONDecodeError, and ints past the digit limit
        raise JSONRefused(f"malformed JSON: {exc}", code=codes.PARSE_ERROR) from None
    try:
        check_document(data)
    except ApiError as exc:
        first = (exc.errors or [{}])[0]
        raise JSONRefused(
            str(first.get("message") or exc.detail),
            code=exc.error_code,
            path=first.get("path", ""),
        ) from None
    return data


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogates (invalid Unicode) are not allowed"
    return None


def check_document(value: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and unstorable text anywhere in `value`.

    Iterative, so that it cannot itself run out of stack on the documents it guards against.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _refuse(
                f"the JSON body is nested deeper than {MAX_DEPTH} levels", codes.NESTING_TOO_DEEP
            )
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                raise _refuse(problem, codes.INVALID_CHARACTERS, path)
        elif isinstance(item, Mapping):
            if isinstance(item, _DuplicateKeys):
                names = ", ".join(repr(k) for k in dict.fromkeys(item.duplicates))
                raise _refuse(
                    f"an object names the key {names} more than once", codes.DUPLICATE_KEY, path
                )
            for key, child in item.items():
                problem = _bad_text(key)
                child_path = f"{path}.{key}" if path else str(key)
                if problem:
                    raise _refuse(f"a key: {problem}", codes.INVALID_CHARACTERS, path)
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


class SafeJSONParser(JSONParser):
    """JSONParser with malformed, over-deep and unstorable bodies answered by 400 + code."""

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding") or "utf-8"
        try:
            text = stream.read().decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise _refuse(f"the body is not valid {encoding} text", codes.PARSE_ERROR) from None
        try:
            return loads(text)
        except JSONRefused as exc:
            raise _refuse(exc.message, exc.code, exc.path) from None
