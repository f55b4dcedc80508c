"""The API's one request parser: JSON that can neither crash a view nor poison the database.

DRF's JSONParser lets a deeply nested body raise RecursionError (a 500), and accepts what
PostgreSQL refuses to store: NUL characters and lone surrogates, which then fail deep inside a
save (another 500). This parser answers each of those with 400 and a code, before any view
code runs, so no endpoint has to remember to check.
"""

from __future__ import annotations

import json
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
            data = json.loads(text, parse_constant=self._refuse_constant)
        except RecursionError:
            # The C decoder recurses per nesting level: thousands of `[` exhaust the stack.
            raise _refuse(
                f"the JSON body is nested deeper than {MAX_DEPTH} levels", codes.NESTING_TOO_DEEP
            ) from None
        except ValueError as exc:  # JSONDecodeError, and ints past the digit limit
            raise _refuse(f"malformed JSON: {exc}", codes.PARSE_ERROR) from None
        check_document(data)
        return data

    @staticmethod
    def _refuse_constant(name: str) -> Any:
        # NaN and Infinity are not JSON (RFC 8259) and PostgreSQL's jsonb refuses them.
        raise ValueError(f"{name} is not valid JSON")
