"""Output shapes of the plans and runs API (the README's "REST API v1": fields are only ever
added, never renamed, since clients rely on them), and small inputs."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from hxo_site.models import AuditEvent
from hxo_site.parameters import INT64_MAX
from hxo_site.serializers import (
    StrictBodySerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
)
from runs_app import selectors
from runs_app.engine import receipts
from runs_app.models import RUN_PUBLIC_STATES, Approval, Partition, Plan, PlanRevision, Run


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


class RevisionSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()

    class Meta:
        model = PlanRevision
        fields = [
            "number",
            "digest",
            "author",
            "comment",
            "created_at",
            "kind_versions",
            "document",
        ]

    def get_author(self, obj: PlanRevision) -> str | None:
        return _username(obj.author)


class PlanSerializer(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()
    revision = serializers.IntegerField(source="latest_number")
    digest = serializers.SerializerMethodField()
    stages = serializers.SerializerMethodField()
    kind_versions = serializers.SerializerMethodField(
        help_text="Job-kind versions the latest revision pins (it runs under them)"
    )

    class Meta:
        model = Plan
        fields = [
            "id",
            "name",
            "description",
            "revision",
            "digest",
            "stages",
            "kind_versions",
            "created_by",
            "created_at",
            "updated_at",
        ]

    def _latest(self, obj: Plan) -> PlanRevision:
        # A list reads the latest revisions in one query (selectors.plans_with_latest_revision);
        # a single plan reads its own.
        prefetched = getattr(obj, "latest_revisions", None)
        if prefetched:
            return prefetched[0]
        cache = self.context.setdefault("_latest", {})
        if obj.pk not in cache:
            cache[obj.pk] = obj.latest_revision
        return cache[obj.pk]

    def get_created_by(self, obj: Plan) -> str | None:
        return _username(obj.created_by)

    def get_digest(self, obj: Plan) -> str:
        return self._latest(obj).digest

    def get_stages(self, obj: Plan) -> list[dict[str, Any]]:
        return self._latest(obj).stages

    def get_kind_versions(self, obj: Plan) -> dict[str, int]:
        return self._latest(obj).kind_versions


class PlanWriteSerializer(serializers.Serializer):
    """Only for the OpenAPI document: the body is a plan document, checked by the validator."""

    name = serializers.CharField()
    description = serializers.CharField(required=False)
    stages = serializers.ListField(child=serializers.DictField())


class ApprovalSerializer(serializers.ModelSerializer):
    user = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = ["user", "decision", "comment", "digest", "acknowledged_findings", "created_at"]

    def get_user(self, obj: Approval) -> str:
        return obj.user.get_username()


class CountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    pending = serializers.IntegerField()
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    reused = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class StageErrorSerializer(serializers.Serializer):
    """Failed partitions of a stage sharing one error code (`selectors.stage_errors`)."""

    code = serializers.CharField()
    count = serializers.IntegerField()
    permanent = serializers.BooleanField()
    example = serializers.CharField()


class RunStageSerializer(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.CharField()
    kind_version = serializers.IntegerField()
    partitioner = serializers.CharField()
    executor = serializers.CharField()
    depends_on = serializers.ListField(child=serializers.CharField())
    state = serializers.CharField()
    counts = CountsSerializer()
    percent = serializers.IntegerField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    elapsed_ms = serializers.IntegerField(allow_null=True)
    slo_ms = serializers.IntegerField()
    slo_breached = serializers.BooleanField()
    merkle_root = serializers.CharField()
    non_idempotent = serializers.BooleanField()
    errors_by_code = StageErrorSerializer(many=True)
    # Added field: {"reason", "since", "checked_at", "retry_after_ms", "target", "checks":
    # [{"check", "value", "limit", "message"}]} while the stage waits for its target's
    # database health checks (runs_app.kinds.dbhealth), else null.
    health_wait = serializers.JSONField(allow_null=True, required=False)


class RunSerializer(serializers.ModelSerializer):
    revision = serializers.IntegerField(source="revision.number")
    stages = serializers.SerializerMethodField()
    approvals = ApprovalSerializer(many=True, read_only=True)
    created_by = serializers.SerializerMethodField()
    # Added fields: while `partitioning`, how far the worker got; when the run failed before
    # any partition ran (partitioning error, `stale_plan` with its `diff`), why.
    partitioning = serializers.SerializerMethodField()
    error = serializers.JSONField(read_only=True)
    # PRODUCT.md's run states: `running (⇄ paused)`. A running run whose pause flag is set
    # reads `paused` (`Run.public_state`); the stored state stays `running`.
    state = serializers.ChoiceField(
        source="public_state", choices=RUN_PUBLIC_STATES, read_only=True
    )
    # Added fields: the pause flag and its intervals, and the live throttle
    # (`selectors.run_control`).
    paused = serializers.SerializerMethodField()
    paused_at = serializers.DateTimeField(read_only=True, allow_null=True)
    pauses = serializers.JSONField(read_only=True)
    paused_ms = serializers.SerializerMethodField()
    throttle = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "plan",
            "revision",
            "mode",
            "state",
            "digest",
            "stages",
            "approvals",
            "required_approvals",
            "merkle_root",
            "parent",
            "dry_run",
            "force_rerun",
            "slo_breached",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "partitioning",
            "error",
            "paused",
            "paused_at",
            "pauses",
            "paused_ms",
            "throttle",
        ]

    def get_paused(self, obj: Run) -> bool:
        return obj.is_paused

    def get_paused_ms(self, obj: Run) -> int:
        return selectors.run_control(obj)["paused_ms"]

    def get_throttle(self, obj: Run) -> dict[str, Any]:
        return selectors.run_control(obj)["throttle"]

    def get_partitioning(self, obj: Run) -> dict[str, Any] | None:
        return selectors.partitioning_progress(obj, obj.run_stages.all())

    def get_stages(self, obj: Run) -> list[dict[str, Any]]:
        stages = list(obj.run_stages.all())
        errors = selectors.stage_errors(stages)
        return RunStageSerializer(
            [selectors.stage_progress(s, errors.get(s.pk)) for s in stages], many=True
        ).data

    def get_created_by(self, obj: Run) -> str | None:
        return _username(obj.requested_by)


class RunDetailSerializer(RunSerializer):
    """`GET /api/v1/runs/{id}/`: the run, and (added) a dry-run's `change_summary`, what its
    apply would change per stage and in total (`selectors.change_summary`; null for an apply
    or a dry-run still partitioning). Lists keep `RunSerializer`: a summary costs queries
    per stage, not to be paid per row of a page."""

    change_summary = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "change_summary"]

    def get_change_summary(self, obj: Run) -> dict[str, Any] | None:
        return selectors.change_summary(obj)


class PartitionSerializer(serializers.ModelSerializer):
    stage = serializers.CharField(source="stage.stage_id")
    # The content id keeps its API name `cas_id` (clients rely on it).
    cas_id = serializers.CharField(source="content_id", max_length=64)

    class Meta:
        model = Partition
        fields = [
            "id",
            "stage",
            "index",
            "wave",
            "label",
            "inputs",
            "fingerprints",
            "cas_id",
            "state",
            "attempts",
            "started_at",
            "finished_at",
            "duration_ms",
            "output",
            "preview",
            "error",
            "reused_from",
        ]


class PartitionLogSerializer(serializers.Serializer):
    """`selectors.partition_log`: one partition's bounded log."""

    run = serializers.IntegerField()
    stage = serializers.CharField()
    index = serializers.IntegerField()
    partition = serializers.IntegerField()
    state = serializers.CharField()
    attempts = serializers.IntegerField()
    lines = serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False)
    )
    dropped_lines = serializers.IntegerField()
    max_lines = serializers.IntegerField()
    max_bytes = serializers.IntegerField()
    updated_at = serializers.DateTimeField(allow_null=True)


class CommentSerializer(StrictBodySerializer):
    comment = StrictCharField(required=False, allow_blank=True, max_length=5000, default="")


class ApproveSerializer(CommentSerializer):
    # Required by a kind whose policy asks approvers to acknowledge high-severity findings.
    acknowledge_findings = StrictBooleanField(required=False, default=False)
    # Added: the run digest the approver reviewed; another digest is refused (409
    # `stale_review`). Left out, the approval binds to the run's digest as before.
    digest = StrictCharField(required=False, max_length=64, min_length=1)


class ApplySerializer(StrictBodySerializer):
    dry_run = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=INT64_MAX)
    force_rerun = StrictBooleanField(required=False, default=False)


class ThrottleSerializer(StrictBodySerializer):
    """`POST /api/v1/runs/{id}/throttle/`: JSON integers only; the bounds are the service's
    (`services.run_throttle`), so the CLI and the API refuse the same values."""

    concurrency = StrictIntegerField(required=False, allow_null=True)
    min_interval_ms = StrictIntegerField(required=False)


class EmptyBodySerializer(StrictBodySerializer):
    """The body of an action that takes no fields: none, or `{}`."""


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "at",
            "actor_name",
            "action",
            "object_type",
            "object_id",
            "client_ip",
            "before",
            "after",
            "detail",
        ]


class ReceiptStageSerializer(serializers.Serializer):
    id = serializers.CharField()
    root = serializers.CharField()
    recorded_root = serializers.CharField()
    verified = serializers.BooleanField()
    leaves = serializers.ListField(child=serializers.CharField())


class ReceiptMissingEffectSerializer(serializers.Serializer):
    stage = serializers.CharField()
    index = serializers.IntegerField()
    reason = serializers.ChoiceField(
        choices=[receipts.EFFECT_MISSING, receipts.EFFECT_CHECK_FAILED, receipts.NO_OUTPUT]
    )


class ReceiptEffectsSerializer(serializers.Serializer):
    checked = serializers.IntegerField(help_text="Partitions whose effect was checked")
    missing = serializers.IntegerField(help_text="Of those, effects not there as recorded")
    complete = serializers.BooleanField(
        help_text="False when HXO_RECEIPT_EFFECTS_BUDGET_S ran out before every partition"
    )
    thorough = serializers.BooleanField(help_text="Every stored byte was hashed again")
    missing_partitions = ReceiptMissingEffectSerializer(
        many=True, help_text="The first 20 partitions whose effect is missing"
    )


class ReceiptSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    merkle_root = serializers.CharField()
    recorded_merkle_root = serializers.CharField()
    stages = ReceiptStageSerializer(many=True)
    verified = serializers.BooleanField(
        help_text="merkle_verified, and every recorded effect checked and found"
    )
    merkle_verified = serializers.BooleanField(
        help_text="The Merkle roots recomputed from the stored results match the recorded ones"
    )
    effects = ReceiptEffectsSerializer()


class MigrateRequestSerializer(StrictBodySerializer):
    dry_run = StrictBooleanField(
        default=False, help_text="Report what would change and write nothing"
    )


class MigrationChangeSerializer(serializers.Serializer):
    stage = serializers.CharField(help_text="Stage id; empty for a change of version pins")
    op = serializers.CharField()
    message = serializers.CharField()


class PlanMigrationSerializer(serializers.Serializer):
    """What POST /api/v1/plans/{id}/migrate/ did or would do (PlanMigration.as_dict)."""

    plan = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["up_to_date", "would_migrate", "migrated", "needs_attention"]
    )
    dry_run = serializers.BooleanField()
    from_revision = serializers.IntegerField()
    revision = serializers.IntegerField(allow_null=True, help_text="The new revision, if any")
    kind_versions = serializers.JSONField(help_text='{"from": {kind: v}, "to": {kind: v}}')
    changes = MigrationChangeSerializer(many=True)
    errors = serializers.ListField(child=serializers.DictField())
    warnings = serializers.ListField(child=serializers.DictField())
