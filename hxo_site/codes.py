"""Stable error and warning codes. Tests and clients assert on these, never on prose.

One list for the whole API, kept with the plumbing: the parser, the middleware, the
authentication and the exception handler answer with these codes as much as the registry and
the runs do, and the plumbing imports neither app.
"""

from __future__ import annotations

# Shape of a stage or plan document.
REQUIRED = "required"
INVALID_TYPE = "invalid_type"
INVALID_VALUE = "invalid_value"
UNKNOWN_FIELD = "unknown_field"

# The contract's four stage rules.
UNKNOWN_KIND = "unknown_kind"
UNKNOWN_PARTITIONER = "unknown_partitioner"
UNKNOWN_EXECUTOR = "unknown_executor"
PARTITIONER_NOT_ALLOWED = "partitioner_not_allowed"
EXECUTOR_NOT_ALLOWED = "executor_not_allowed"
INVALID_PARAMS = "invalid_params"

# Safety policy.
NON_IDEMPOTENT_FORBIDDEN = "non_idempotent_forbidden"
NON_IDEMPOTENT_UNDECLARED = "non_idempotent_undeclared"
FORCE_MERGE_REQUIRED = "force_merge_required"

# Plan structure.
DUPLICATE_STAGE_ID = "duplicate_stage_id"
UNKNOWN_DEPENDENCY = "unknown_dependency"
DEPENDENCY_CYCLE = "dependency_cycle"
TOO_MANY_STAGES = "too_many_stages"
EMPTY_PLAN = "empty_plan"

# Evolution.
KIND_DEPRECATED = "kind_deprecated"  # a warning
COMPONENT_DEPRECATED = "component_deprecated"  # a warning
KIND_SUNSET = "kind_sunset"  # the kind, or the version a revision pins, is past its sunset
COMPONENT_SUNSET = "component_sunset"  # a partitioner or executor past its sunset
KIND_VERSION_OUTDATED = "kind_version_outdated"  # a warning: pinned to an older version
INVALID_MIGRATION = "invalid_migration"  # a declared migration step is malformed
MIGRATION_FAILED = "migration_failed"  # a stored plan cannot be migrated automatically
UNKNOWN_VERSION = "unknown_version"

# Registry entries (admin and API writes).
INVALID_SCHEMA = "invalid_schema"
UNKNOWN_REPLACEMENT = "unknown_replacement"
# A partitioner does not produce a field the kind's input schema requires, or produces it
# with another type (blueprints_app.compat).
INPUT_NOT_PRODUCED = "input_not_produced"
INPUT_TYPE_MISMATCH = "input_type_mismatch"
INPUT_NOT_ALLOWED = "input_not_allowed"  # produced, but the schema says additionalProperties
# An executor reads a field no allowed partitioner produces, returns an output that lacks a
# field (or a value) the kind's output schema requires, or cannot serve the kind at all.
EXECUTOR_INPUT_MISSING = "executor_input_missing"
OUTPUT_NOT_PRODUCED = "output_not_produced"
OUTPUT_TYPE_MISMATCH = "output_type_mismatch"
EXECUTOR_UNSUPPORTED_KIND = "executor_unsupported_kind"
DUPLICATE_KEY = "duplicate_key"  # a JSON object names a key twice

# Engine and API.
DRY_RUN_REQUIRED = "dry_run_required"
DRY_RUN_NOT_APPROVED = "dry_run_not_approved"
STALE_PLAN = "stale_plan"
SELF_APPROVAL_FORBIDDEN = "self_approval_forbidden"
APPROVAL_USED = "approval_used"  # the approved dry-run was already applied (409)
APPROVAL_EXPIRED = "approval_expired"  # approvals older than HXO_APPROVAL_TTL_HOURS (409)
APPROVAL_INCOMPLETE = "approval_incomplete"  # approvals cover only part of the manifest (409)
REPLAY_IN_PROGRESS = "replay_in_progress"  # the run's replay has not finished yet (409)
# The replay's copy stalled past its lease and the reconciler discarded it (503): ask again.
REPLAY_ABANDONED = "replay_abandoned"
ALREADY_REPLAYED = "already_replayed"  # the run was replayed: replay that replay (409)
NOTHING_TO_REPLAY = "nothing_to_replay"
ALREADY_DECIDED = "already_decided"
# A decision posted with the digest of a review other than the run's (409): the form was
# rendered for another digest, or the client names one it did not review.
STALE_REVIEW = "stale_review"
INVALID_STATE = "invalid_state"
ALREADY_PAUSED = "already_paused"  # pause of a paused run (409)
NOT_PAUSED = "not_paused"  # resume of a run that is not paused (409)
TOO_MANY_PARTITIONS = "too_many_partitions"
PARTITIONING_FAILED = "partitioning_failed"
INVALID_INPUTS = "invalid_inputs"
INVALID_OUTPUT = "invalid_output"
PERMISSION_DENIED = "permission_denied"
NOT_AUTHENTICATED = "not_authenticated"
NOT_FOUND = "not_found"
PARSE_ERROR = "parse_error"
BODY_TOO_LARGE = "body_too_large"
VALIDATION_FAILED = "validation_failed"
PRECONDITION_FAILED = "precondition_failed"  # If-Match names an older revision (412)
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # the key was used for another request (422)

# Hostile input and authentication (hxo_site.parsers, .middleware, .authentication).
NESTING_TOO_DEEP = "nesting_too_deep"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
INVALID_CHARACTERS = "invalid_characters"
TOKEN_EXPIRED = "token_expired"
INVALID_CREDENTIALS = "invalid_credentials"
THROTTLED = "throttled"
# The database stayed busy past its wait (SQLite's write lock held longer than its busy
# timeout, a PostgreSQL deadlock): nothing was written; try again (503, Retry-After).
DATABASE_BUSY = "database_busy"
LOGIN_THROTTLED = "login_throttled"

# Approvals.
# A kind's policy requires the approver to acknowledge high-severity findings of the dry-run.
FINDINGS_NOT_ACKNOWLEDGED = "findings_not_acknowledged"
