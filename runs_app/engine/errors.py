"""The engine's own errors. Services translate them where a user-facing refusal is needed;
the engine never raises the service layer's `ServiceError`.

`LeaseLost` belongs to the executor contract (`blueprints_app.registry`), since executors
raise it too; it is not redefined here.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the errors the engine raises while it executes a partition."""


class PartitionTimeout(EngineError):
    """The partition ran past HXO_PARTITION_TIMEOUT_MS. Stored as error code `shard_timeout`
    (the code clients know; only the Python name changed)."""


class RunAborted(EngineError):
    """The run was aborted while the partition ran."""
