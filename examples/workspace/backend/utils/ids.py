"""Identifiers: sortable, prefixed by entity ("ord_01H..."), unguessable."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A ULID-like id: 48 bits of milliseconds then 80 random bits, Crockford base32."""
    millis = int(time.time() * 1000)
    randomness = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode(millis, 10)}{_encode(randomness, 16)}"


def prefix_of(identifier: str) -> str:
    return identifier.split("_", 1)[0]
