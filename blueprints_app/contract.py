"""The six job kinds of HXO_BLUEPRINT_CONTRACT.md v1.9.6n, as data.

This is what the registry is loaded with (migration 0002 and `hxo_load_registry`). The input and
output schemas are the contract's field lists turned into JSON Schema: every listed field is
required and typed as the contract says. Extra fields are allowed, since the contract lets
outputs "add fields" (digest, bytes, duration) and executors may carry more inputs.
"""

from __future__ import annotations

import copy
from typing import Any

CONTRACT_VERSION = "1.9.6n"

_JSON_TYPES = {"integer": {"type": "integer"}, "string": {"type": "string"}}


def _schema(fields: dict[str, str], *, const: dict[str, str] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {name: dict(_JSON_TYPES[t]) for name, t in fields.items()}
    for name, value in (const or {}).items():
        properties[name] = {"type": "string", "const": value}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }


CONTRACT_KINDS: list[dict[str, Any]] = [
    {
        "kind": "deploy.pack",
        "description": "Pack backend files for deployment (build, bundle, compress)",
        "partitioners": ["by_filesize", "by_module"],
        "executors": ["pack_backend"],
        "allow_non_idempotent": False,
        "require_dry_run": False,
        "default_slo_ms": 120000,
        "input_schema": _schema(
            {
                "partition_id": "integer",
                "file_range_start": "integer",
                "file_range_end": "integer",
                "chunk_size_mb": "integer",
            }
        ),
        "output_schema": _schema(
            {"partition_id": "integer", "files_processed": "integer"},
            const={"status": "packed"},
        ),
        "result_status": "packed",
    },
    {
        "kind": "deploy.migrate",
        "description": "Execute database migrations in batches",
        "partitioners": ["by_sql_batch"],
        "executors": ["sql_migrate"],
        "allow_non_idempotent": True,
        "require_dry_run": True,
        "default_slo_ms": 30000,
        "input_schema": _schema(
            {"batch_id": "integer", "offset": "integer", "limit": "integer", "stage_kind": "string"}
        ),
        "output_schema": _schema(
            {"batch_id": "integer", "rows_affected": "integer"}, const={"status": "migrated"}
        ),
        "result_status": "migrated",
    },
    {
        "kind": "deploy.prime",
        "description": "Prime registry and caches for application startup",
        "partitioners": ["by_module", "by_dag_depth"],
        "executors": ["warm_registry", "prime_caches"],
        "allow_non_idempotent": False,
        "require_dry_run": False,
        "default_slo_ms": 45000,
        "input_schema": _schema({"module": "string", "stage_kind": "string"}),
        "output_schema": _schema(
            {"module": "string", "cache_entries": "integer"}, const={"status": "warmed"}
        ),
        "result_status": "warmed",
    },
    {
        "kind": "assets.index",
        "description": "Index assets for search and retrieval",
        "partitioners": ["by_asset_bucket", "by_filesize"],
        "executors": ["index_assets"],
        "allow_non_idempotent": False,
        "require_dry_run": False,
        "default_slo_ms": 60000,
        "input_schema": _schema({"bucket": "string", "stage_kind": "string"}),
        "output_schema": _schema(
            {"bucket": "string", "assets_indexed": "integer"}, const={"status": "indexed"}
        ),
        "result_status": "indexed",
    },
    {
        "kind": "assets.stage",
        "description": "Stage assets for deployment (upload, CDN sync)",
        "partitioners": ["by_asset_bucket", "by_filesize"],
        "executors": ["index_assets"],
        "allow_non_idempotent": False,
        "require_dry_run": False,
        "default_slo_ms": 60000,
        # The contract gives assets.stage no schemas; these follow assets.index.
        "input_schema": _schema({"bucket": "string", "stage_kind": "string"}),
        "output_schema": _schema(
            {"bucket": "string", "assets_staged": "integer"}, const={"status": "staged"}
        ),
        "result_status": "staged",
    },
    {
        "kind": "docs.index",
        "description": "Index documentation for search",
        "partitioners": ["by_route_map"],
        "executors": ["docs_index"],
        "allow_non_idempotent": False,
        "require_dry_run": False,
        "default_slo_ms": 30000,
        "input_schema": _schema({"route": "string", "stage_kind": "string"}),
        "output_schema": _schema(
            {"route": "string", "docs_indexed": "integer"}, const={"status": "indexed"}
        ),
        "result_status": "indexed",
    },
]


def contract_kinds() -> list[dict[str, Any]]:
    """A deep copy, so callers can't mutate the contract by accident."""
    return copy.deepcopy(CONTRACT_KINDS)


# HXO's addition to the contract's safety policy (`JobKind.require_findings_ack`): kinds whose
# approvers must acknowledge high-severity findings. The contract's policy has two fields and
# says nothing against a stricter approval; the flag changes no plan's validity. Set by
# migration 0005 for the seeded kinds.
FINDINGS_ACK_KINDS = frozenset({"deploy.migrate"})
