"""Shapes of the registry API: job kinds, code components, validation requests and results.

Serializers check shape only; the rules are the validator's (`blueprints_app.validation`),
whose findings are returned as `{path, code, message}` exactly as it reports them.
"""

from __future__ import annotations

from typing import Any

from django.db import models, transaction
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.services import (
    JOB_KIND_CHECKED_FIELDS,
    JobKindInvalid,
    job_kind_data,
    job_kind_save,
)
from blueprints_app.validation import ValidationResult, validate_job_kind
from hxo_site import codes
from hxo_site.net import client_ip
from hxo_site.serializers import (
    IssueSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
)


def validation_error(result: ValidationResult) -> serializers.ValidationError:
    """The validator's errors as a DRF ValidationError keyed by path, codes preserved."""
    detail: dict[str, list[ErrorDetail]] = {}
    for issue in result.errors:
        detail.setdefault(issue.path, []).append(ErrorDetail(issue.message, code=issue.code))
    return serializers.ValidationError(detail)


class SafetyPolicySerializer(serializers.Serializer):
    allow_non_idempotent = StrictBooleanField(default=False)
    require_dry_run = StrictBooleanField(default=False)
    require_findings_ack = StrictBooleanField(default=False)


class JobKindSerializer(serializers.ModelSerializer):
    # The model's fields as strict JSON types ("yes" is not a boolean, "7" not a number).
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.BooleanField: StrictBooleanField,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.PositiveIntegerField: StrictIntegerField,
        models.PositiveSmallIntegerField: StrictIntegerField,
    }
    partitioners = serializers.ListField(child=StrictCharField(max_length=100), allow_empty=False)
    executors = serializers.ListField(child=StrictCharField(max_length=100), allow_empty=False)
    safety_policy = SafetyPolicySerializer(source="*", required=False)
    input_schema = serializers.JSONField(required=False)
    output_schema = serializers.JSONField(required=False)

    class Meta:
        model = JobKind
        fields = [
            "kind",
            "description",
            "partitioners",
            "executors",
            "safety_policy",
            "default_slo_ms",
            "input_schema",
            "output_schema",
            "result_status",
            "version",
            "deprecated",
            "sunset_at",
            "replaced_by",
            "required_approvals",
        ]
        # Versions are the registry's to bump (blueprints_app.services.job_kind_save).
        read_only_fields = ["version"]
        # The model's CheckConstraints, as field errors (400) rather than IntegrityErrors (500).
        extra_kwargs = {"default_slo_ms": {"min_value": 1}, "required_approvals": {"min_value": 1}}

    def to_internal_value(self, data: Any) -> Any:
        # A misspelt field ("require_dryrun") would otherwise be ignored without a word and
        # the kind saved without the safety setting its author meant. Fields the API shows
        # (read-only ones included) are accepted, so a client may PUT back what it GOT.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        key: [ErrorDetail("unknown field", code=codes.UNKNOWN_FIELD)]
                        for key in unknown
                    }
                )
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (
            self.instance is not None
            and attrs.get("kind", self.instance.kind) != self.instance.kind
        ):
            raise serializers.ValidationError(
                {"kind": [ErrorDetail("a job kind cannot be renamed", code=codes.INVALID_VALUE)]}
            )
        data = job_kind_data(self.instance) if self.instance is not None else {}
        data.setdefault("input_schema", {})
        data.setdefault("output_schema", {})
        data.update({k: v for k, v in attrs.items() if k in JOB_KIND_CHECKED_FIELDS})
        result = validate_job_kind(data)
        if not result.valid:
            raise validation_error(result)
        return attrs

    def create(self, validated_data: dict[str, Any]) -> JobKind:
        return self._save(JobKind(), validated_data)

    def update(self, instance: JobKind, validated_data: dict[str, Any]) -> JobKind:
        # The fields this request changes go onto the row as it is under the lock, not onto
        # the copy read before it: two concurrent PATCHes of different fields both land.
        with transaction.atomic():
            locked = JobKind.objects.select_for_update().get(pk=instance.pk)
            return self._save(locked, validated_data)

    def _save(self, job_kind: JobKind, validated_data: dict[str, Any]) -> JobKind:
        changed = [f for f, v in validated_data.items() if getattr(job_kind, f, None) != v]
        for field, value in validated_data.items():
            setattr(job_kind, field, value)
        request = self.context.get("request")
        try:
            return job_kind_save(
                job_kind=job_kind,
                user=getattr(request, "user", None),
                changed_fields=changed,
                via=self.context.get("via", "api" if request is not None else ""),
                client_ip=client_ip(request) if request is not None else None,
            )
        except JobKindInvalid as exc:
            raise validation_error(exc.result) from None


class JobKindVersionSerializer(serializers.ModelSerializer):
    """One version of a kind: its contract, what changed from the version before, when plans
    pinned to it stop running (`sunset_at`) and the steps that migrate them (`migration`)."""

    current = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = JobKindVersion
        fields = [
            "kind",
            "version",
            "current",
            "contract",
            "changed_fields",
            "sunset_at",
            "migration",
            "created_by",
            "created_at",
        ]

    def get_current(self, obj: JobKindVersion) -> bool:
        return self.context.get("current_version") == obj.version

    def get_created_by(self, obj: JobKindVersion) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None


class JobKindVersionUpdateSerializer(serializers.Serializer):
    """The writable fields of a version (registry admins); the contract itself is history."""

    sunset_at = serializers.DateTimeField(required=False, allow_null=True)
    migration = serializers.JSONField(required=False)


class PartitionerSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()
    inputs_schema = serializers.JSONField(
        help_text="JSON Schema of the inputs of every partition it yields ({type: object}: "
        "undeclared)"
    )
    deprecated = serializers.BooleanField()
    sunset_at = serializers.DateTimeField(allow_null=True)
    replaced_by = serializers.CharField(allow_blank=True)


class ExecutorSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    idempotent = serializers.BooleanField()
    supports_dry_run = serializers.BooleanField()
    inputs_schema = serializers.JSONField(help_text="JSON Schema of the partition inputs it reads")
    output_schema = serializers.JSONField(
        help_text="JSON Schema of an apply's output (an executor serving several kinds may "
        "return a different one per kind; the registry checks that one)"
    )
    deprecated = serializers.BooleanField()
    sunset_at = serializers.DateTimeField(allow_null=True)
    replaced_by = serializers.CharField(allow_blank=True)


class ValidateRequestSerializer(serializers.Serializer):
    """Documentation of the body of POST /api/v1/validate/: exactly one of the two."""

    stage = serializers.JSONField(required=False, help_text="One stage document")
    plan = serializers.JSONField(required=False, help_text="A plan {name, description, stages}")


class ValidationResultSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = IssueSerializer(many=True)
    warnings = IssueSerializer(many=True)
