"""The job-kind registry (the blueprint contract as rows) and the capability permissions."""

from __future__ import annotations

from typing import Any

from django.db import models


class JobKind(models.Model):
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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

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
        }

    def snapshot(self) -> dict[str, Any]:
        """The contract fields, as pinned into a run."""
        return {
            "kind": self.kind,
            "version": self.version,
            "partitioners": list(self.partitioners),
            "executors": list(self.executors),
            "allow_non_idempotent": self.allow_non_idempotent,
            "require_dry_run": self.require_dry_run,
            "default_slo_ms": self.default_slo_ms,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "result_status": self.result_status,
            "required_approvals": self.required_approvals,
        }


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
