"""The job-kind registry (the blueprint contract as rows) and the capability permissions."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from blueprints_app.constraints import FriendlyConstraints

# The fields of a kind that plans are written against: a change to any of them is a new
# version of the kind (blueprints_app.services.job_kind_save). Description and deprecation are
# facts about the kind, not about what a plan may say, so they change without a new version.
VERSIONED_FIELDS = (
    "partitioners",
    "executors",
    "allow_non_idempotent",
    "require_dry_run",
    "required_approvals",
    "default_slo_ms",
    "input_schema",
    "output_schema",
    "result_status",
)


def contract_snapshot(kind: Any) -> dict[str, Any]:
    """The contract fields of a job kind row (live or historical model), as plain JSON."""
    snap: dict[str, Any] = {"kind": kind.kind, "version": kind.version}
    for field in VERSIONED_FIELDS:
        value = getattr(kind, field)
        snap[field] = list(value) if isinstance(value, list | tuple) else value
    return snap


class JobKind(FriendlyConstraints):
    """One registry entry of the contract.

    Single-row facts live here; rules that span a stage, a plan and a user live in
    `blueprints_app.validation`, the one validator.
    """

    kind = models.CharField(max_length=100, unique=True, help_text="e.g. deploy.pack")
    description = models.TextField()
    partitioners = models.JSONField(default=list, help_text="Allowed partitioner names")
    executors = models.JSONField(default=list, help_text="Allowed executor names")
    allow_non_idempotent = models.BooleanField(default=False)
    require_dry_run = models.BooleanField(default=False)
    default_slo_ms = models.PositiveIntegerField()
    input_schema = models.JSONField(default=dict)
    output_schema = models.JSONField(default=dict)
    result_status = models.CharField(max_length=50)
    version = models.PositiveIntegerField(default=1)
    deprecated = models.BooleanField(default=False)
    sunset_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.CharField(max_length=100, blank=True, default="")
    required_approvals = models.PositiveSmallIntegerField(default=1)
    # HXO's addition to the contract's safety policy: an approver must tick that they read
    # the dry-run's high-severity findings (runs_app.sqllint) before approving. It asks more
    # of the approver and nothing of a plan, so it is not a versioned field.
    require_findings_ack = models.BooleanField(
        default=False,
        help_text="Approvers must acknowledge high-severity findings (e.g. risky SQL)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not fields: set only on kinds built for a pinned older version
    # (blueprints_app.versions.pinned_kind), so the validator can say how old the pin is.
    current_version: int | None = None
    version_sunset_at: Any = None
    safety_tightened: bool = False

    class Meta:
        ordering = ["kind"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(required_approvals__gte=1), name="jobkind_approvals_gte_1"
            ),
            models.CheckConstraint(
                condition=models.Q(default_slo_ms__gte=1), name="jobkind_slo_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.kind

    @property
    def safety_policy(self) -> dict[str, bool]:
        return {
            "allow_non_idempotent": self.allow_non_idempotent,
            "require_dry_run": self.require_dry_run,
            "require_findings_ack": self.require_findings_ack,
        }

    def snapshot(self) -> dict[str, Any]:
        """The contract fields, as pinned into a run."""
        return contract_snapshot(self)


class JobKindVersion(FriendlyConstraints):
    """One version of a job kind's contract, kept so that plans pinned to it keep working.

    Every version has a row, the current one included, written by `job_kind_save` when the
    version comes into being. Rows are keyed by the kind's name rather than by a foreign key:
    a kind deleted and added again continues its numbering, so a pinned number never comes to
    mean another contract.
    """

    kind = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    contract = models.JSONField(help_text="JobKind.snapshot() of this version")
    changed_fields = models.JSONField(
        default=list, blank=True, help_text="Contract fields that differ from the version before"
    )
    # Steps that take a stage written for this version to the next one, or to another kind
    # (blueprints_app.evolution); steps registered in code for the same version run first.
    migration = models.JSONField(default=list, blank=True)
    # When plans still pinned to this version stop validating (kind_sunset); None: never.
    sunset_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind", "version"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "version"], name="jobkindversion_unique"),
            models.CheckConstraint(
                condition=models.Q(version__gte=1), name="jobkindversion_version_gte_1"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} v{self.version}"


class Capability(models.Model):
    """Holds HXO's capability permissions (`hxo:<name>` in the API); it has no table."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("plan", "hxo:plan — author and edit plans"),
            ("submit", "hxo:submit — start dry-runs and applies"),
            ("approve", "hxo:approve — approve or reject dry-runs"),
            ("abort", "hxo:abort — abort runs"),
            ("replay", "hxo:replay — replay failed partitions"),
            ("view", "hxo:view — see plans and runs"),
            ("audit", "hxo:audit — read the audit log"),
            ("force_merge", "hxo:force-merge — run non-idempotent stages"),
        ]

    def __str__(self) -> str:
        return "capability"
