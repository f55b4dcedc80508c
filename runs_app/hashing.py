"""Content identifiers: canonical JSON, plan digests, content ids and Merkle roots
(docs/architecture.md, "Identifiers").

"Content id" is the content-addressed identifier of a partition's work (stored as
`Partition.content_id`, shown as `cas_id` by the REST API); "compare-and-swap" is kept for the
engine's fenced updates, which are unrelated."""

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


CONTENT_ID_FORMAT = 2  # bump when what a content id covers changes: older ids never match


def content_id(
    *,
    kind: str,
    kind_version: int,
    executor: str,
    partitioner: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    fingerprints: dict[str, str],
    depends_on: Sequence[str],
) -> str:
    """A partition's content id (docs/architecture.md, "Identifiers"): hex SHA-256 over the
    canonical JSON of everything that determines its effect.

    - `kind`, `kind_version`, `executor`: what runs;
    - `partitioner` and `params`: the stage's params *resolved* by the caller (schema defaults
      applied, so leaving a default out and writing it give one id; every workspace and
      database target replaced by its name and identity, see runs_app.manifest), because
      params such as a compression level, a target or a timeout decide the effect. Params
      only mean something to the partitioner that reads them, so its name is included;
    - `inputs` and `fingerprints`: the partition's own work and the content it reads;
    - `depends_on`: content ids, or content roots of whole stages, of what must run first.

    Left out on purpose, because they change no effect: the stage id, labels and weights,
    `slo_ms`, `max_failed_partitions`, `depends_on` stage ids (their content roots are in), the
    plan's name, description and revision number. Two partitions share a content id only if
    running either has the same effect; an equal id is still not enough to reuse (the
    executor must also confirm the effect exists: Executor.effect_exists).
    """
    return sha256_hex(
        canonical_json(
            [
                CONTENT_ID_FORMAT,
                kind,
                kind_version,
                executor,
                partitioner,
                params,
                inputs,
                fingerprints,
                sorted(depends_on),
            ]
        )
    )


def content_root(content_ids: Iterable[str]) -> str:
    """One id standing for a set of partitions (a whole stage a later stage depends on): hex
    SHA-256 over the sorted content ids."""
    h = hashlib.sha256()
    for cid in sorted(content_ids):
        h.update(cid.encode())
    return h.hexdigest()


def merkle_leaf(*, executor: str, content_id: str, output: Any, attempt: int) -> str:
    """SHA-256 over (executor, content id, SHA-256 of the canonical output, attempt number).

    An apply's output carries its effect's identity (`output["effect"]`: the storage
    location, database, cache or target it wrote to, and the digest of what it wrote; see
    runs_app.kinds.base), and the content id carries the resolved params with every workspace and
    target by identity, so a leaf binds what was done, where, and what came of it: a
    verified receipt means the stored results are still those the run recorded."""
    output_digest = sha256_hex(canonical_json(output))
    return sha256_hex(canonical_json([executor, content_id, output_digest, attempt]))


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
