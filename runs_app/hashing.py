"""Content identifiers: canonical JSON, plan digests, CAS ids and Merkle roots (PRODUCT.md)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 as is: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def document_digest(document: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(document))


def cas_id(
    *,
    kind: str,
    kind_version: int,
    executor: str,
    inputs: dict[str, Any],
    fingerprints: dict[str, str],
    depends_on: Sequence[str],
) -> str:
    """SHA-256 over (kind, kind version, executor, inputs, input fingerprints, CAS ids of the
    partitions it depends on). `depends_on` holds CAS ids, or the CAS roots of whole stages."""
    return sha256_hex(
        canonical_json([kind, kind_version, executor, inputs, fingerprints, sorted(depends_on)])
    )


def cas_root(cas_ids: Iterable[str]) -> str:
    """One id standing for a set of partitions (a whole stage a later stage depends on)."""
    h = hashlib.sha256()
    for cid in sorted(cas_ids):
        h.update(cid.encode())
    return h.hexdigest()


def merkle_leaf(*, executor: str, cas: str, output: Any, attempt: int) -> str:
    output_digest = sha256_hex(canonical_json(output))
    return sha256_hex(canonical_json([executor, cas, output_digest, attempt]))


def merkle_root(leaves: Sequence[str]) -> str:
    """Pairs hash as SHA-256(left || right) over the hex digests' bytes; an odd leaf is promoted.
    The root of no leaves is the hash of nothing."""
    if not leaves:
        return sha256_hex(b"")
    level = [bytes.fromhex(leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [
            hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()
