"""Contract names registered before their real implementations land: running one fails loudly."""

from __future__ import annotations

from blueprints_app.registry import Executor, Partitioner, register_executor, register_partitioner

_WORKSPACE = {"type": "string", "description": "A registered workspace"}

for _name, _schema in {
    "by_filesize": {
        "type": "object",
        "properties": {"workspace": _WORKSPACE, "chunk_size_mb": {"type": "integer", "minimum": 1}},
        "required": ["workspace"],
    },
    "by_module": {
        "type": "object",
        "properties": {"workspace": _WORKSPACE},
        "required": ["workspace"],
    },
    "by_sql_batch": {
        "type": "object",
        "properties": {"target": {"type": "string"}},
        "required": ["target"],
    },
    "by_dag_depth": {
        "type": "object",
        "properties": {"workspace": _WORKSPACE},
        "required": ["workspace"],
    },
    "by_asset_bucket": {
        "type": "object",
        "properties": {"workspace": _WORKSPACE},
        "required": ["workspace"],
    },
    "by_route_map": {
        "type": "object",
        "properties": {"workspace": _WORKSPACE},
        "required": ["workspace"],
    },
}.items():
    register_partitioner(
        type(f"P_{_name}", (Partitioner,), {"name": _name, "params_schema": _schema})
    )

for _name in (
    "pack_backend",
    "sql_migrate",
    "warm_registry",
    "prime_caches",
    "index_assets",
    "docs_index",
):
    register_executor(type(f"E_{_name}", (Executor,), {"name": _name}))
