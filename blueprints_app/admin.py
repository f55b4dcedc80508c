"""The registry in the Django admin: registry admins edit job kinds here.

The form offers the registered partitioners and executors as checkboxes and shows schemas as
indented JSON, but the judge of what may be saved is the one validator
(`validation.validate_job_kind`), whose messages land on the field they are about.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from blueprints_app import registry
from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.services import (
    JOB_KIND_CHECKED_FIELDS,
    check_version_update,
    job_kind_data,
    job_kind_delete,
    job_kind_save,
    job_kind_version_update,
)
from blueprints_app.validation import validate_job_kind
from hxo_site import parsers
from hxo_site.capabilities import can_edit_registry
from hxo_site.net import client_ip


class PrettyJSONField(forms.JSONField):
    """JSON shown indented by two spaces, in a textarea tall enough to read a schema.

    Read with the API's parser (`hxo_site.parsers.loads`), so the admin takes what the API
    takes and refuses what it refuses: `{}` and `[]` are values (Django's JSONField calls them
    empty and "required"), duplicate keys, NaN, Infinity and `1e400` are field errors with
    the parser's code (never a 500 from the database's JSON check).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "widget", forms.Textarea(attrs={"rows": 16, "cols": 80, "class": "vLargeTextField"})
        )
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        if self.disabled or not isinstance(value, str):
            return super().to_python(value)
        if not value.strip():
            return None
        try:
            return parsers.loads(value)
        except parsers.JSONRefused as exc:
            where = f" (at {exc.path})" if exc.path else ""
            raise forms.ValidationError(
                f"{exc.message}{where}", code=exc.code, params={"value": value}
            ) from None

    def validate(self, value: Any) -> None:
        # Only a blank field is missing: {} is an object (an empty schema accepts anything).
        if value is None and self.required:
            raise forms.ValidationError(self.error_messages["required"], code="required")

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)


class RegistryNamesField(forms.MultipleChoiceField):
    """Checkboxes over registered names; any value is passed on for the validator to judge."""

    widget = forms.CheckboxSelectMultiple

    def valid_value(self, value: str) -> bool:
        return True


def _choices(registered: list[tuple[str, str]], stored: list[Any]) -> list[tuple[str, str]]:
    """Registered names, plus stored names that are no longer registered (flagged)."""
    known = {name for name, _ in registered}
    missing = [
        (n, f"{n} (not registered)") for n in stored if isinstance(n, str) and n not in known
    ]
    return [*registered, *missing]


class JobKindForm(forms.ModelForm):
    partitioners = RegistryNamesField(help_text="Allowed partitioners (from the code registry)")
    executors = RegistryNamesField(help_text="Allowed executors (from the code registry)")
    input_schema = PrettyJSONField(help_text="JSON Schema of a partition's inputs")
    output_schema = PrettyJSONField(help_text="JSON Schema of a partition's result")

    class Meta:
        model = JobKind
        fields = [
            "kind",
            "description",
            "partitioners",
            "executors",
            "allow_non_idempotent",
            "require_dry_run",
            "required_approvals",
            "require_findings_ack",
            "default_slo_ms",
            "result_status",
            "input_schema",
            "output_schema",
            "deprecated",
            "sunset_at",
            "replaced_by",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Choices are read per form, so components registered by plugins show up.
        self.fields["partitioners"].choices = _choices(
            registry.partitioner_choices(), list(self.instance.partitioners or [])
        )
        self.fields["executors"].choices = _choices(
            registry.executor_choices(), list(self.instance.executors or [])
        )

    def _get_validation_exclusions(self) -> set[str]:
        # The model's JSONField calls {} blank; here {} is a schema (it accepts anything), as
        # in the API. The form field parsed it and the validator judges it.
        return {*super()._get_validation_exclusions(), "input_schema", "output_schema"}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        data = job_kind_data(self.instance)
        data.update({f: cleaned[f] for f in JOB_KIND_CHECKED_FIELDS if f in cleaned})
        own = set(self.errors)
        for issue in validate_job_kind(data).errors:
            field = issue.path.split("[", 1)[0].split(".", 1)[0]
            if field in own:
                continue  # the field's own error already says what is wrong
            if field in self.fields:
                # Every finding on the field (add_error drops it from `cleaned`, so that
                # cannot be the test).
                self.add_error(field, issue.message)
            elif field not in self.fields:
                self.add_error(None, f"{issue.path}: {issue.message}")
        return cleaned


@admin.register(JobKind)
class JobKindAdmin(admin.ModelAdmin):
    form = JobKindForm
    # The columns of the contract's Appendix table, then SLO, version and deprecation.
    list_display = [
        "kind",
        "partitioner_names",
        "executor_names",
        "non_idempotent",
        "dry_run",
        "slo",
        "version",
        "deprecated",
    ]
    list_filter = ["deprecated", "allow_non_idempotent", "require_dry_run"]
    search_fields = ["kind", "description"]
    ordering = ["kind"]
    fieldsets = [
        (None, {"fields": ["kind", "description"]}),
        ("Components", {"fields": ["partitioners", "executors"]}),
        (
            "Safety policy",
            {
                "fields": [
                    "allow_non_idempotent",
                    "require_dry_run",
                    "required_approvals",
                    "require_findings_ack",
                ]
            },
        ),
        ("Results", {"fields": ["default_slo_ms", "result_status"]}),
        ("Schemas", {"fields": ["input_schema", "output_schema"]}),
        (
            "Evolution",
            {
                "fields": ["version", "deprecated", "sunset_at", "replaced_by", "versions"],
                "description": "A change to a component, safety, SLO, schema or result field "
                "is saved as a new version; plans keep running under the version they pin "
                "until it is sunset. Deprecation and sunset of the kind apply to every version.",
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: JobKind | None = None) -> list[str]:
        readonly = ["version", "versions", "created_at", "updated_at"]
        if obj is not None:
            readonly.append("kind")  # plans refer to kinds by name
        return readonly

    @admin.display(description="Versions")
    def versions(self, obj: JobKind) -> str:
        rows = JobKindVersion.objects.filter(kind=obj.kind).order_by("-version")
        if not obj.pk or not rows:
            return "none yet"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">v{}</a> {} {}</li>',
                (
                    (
                        reverse("admin:blueprints_app_jobkindversion_change", args=[row.pk]),
                        row.version,
                        ("(current) " if row.version == obj.version else "")
                        + (
                            f"changed: {', '.join(row.changed_fields)}"
                            if row.changed_fields
                            else "first version"
                        ),
                        f"· sunset {row.sunset_at:%Y-%m-%d}" if row.sunset_at else "",
                    )
                    for row in rows
                ),
            ),
        )

    @admin.display(description="Partitioners")
    def partitioner_names(self, obj: JobKind) -> str:
        return ", ".join(obj.partitioners)

    @admin.display(description="Executors")
    def executor_names(self, obj: JobKind) -> str:
        return ", ".join(obj.executors)

    @admin.display(description="Non-Idempotent", ordering="allow_non_idempotent")
    def non_idempotent(self, obj: JobKind) -> str:
        return "Yes" if obj.allow_non_idempotent else "No"

    @admin.display(description="Dry-Run", ordering="require_dry_run")
    def dry_run(self, obj: JobKind) -> str:
        return "Yes" if obj.require_dry_run else "No"

    @admin.display(description="SLO (ms)", ordering="default_slo_ms")
    def slo(self, obj: JobKind) -> int:
        return obj.default_slo_ms

    def save_model(self, request: HttpRequest, obj: JobKind, form: Any, change: bool) -> None:
        job_kind_save(
            job_kind=obj,
            user=request.user,
            changed_fields=form.changed_data,
            via="admin",
            client_ip=client_ip(request),
        )

    def delete_model(self, request: HttpRequest, obj: JobKind) -> None:
        job_kind_delete(job_kind=obj, user=request.user, via="admin", client_ip=client_ip(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[JobKind]) -> None:
        for obj in queryset:
            job_kind_delete(
                job_kind=obj,
                user=request.user,
                via="admin",
                client_ip=client_ip(request),
            )


class JobKindVersionForm(forms.ModelForm):
    migration = PrettyJSONField(
        required=False,
        help_text="Steps that take a stage written for this version to the next one, or to "
        'another kind, e.g. [{"op": "rename_partitioner", "from": "a", "to": "b"}] '
        "(see blueprints_app/evolution.py for every op).",
    )

    class Meta:
        model = JobKindVersion
        fields = ["sunset_at", "migration"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("migration") is None:
            cleaned["migration"] = []
        result = check_version_update(
            self.instance,
            sunset_at=cleaned.get("sunset_at"),
            migration=cleaned["migration"],
        )
        for issue in result.errors:
            field = issue.path.split("[", 1)[0].split(".", 1)[0]
            if field in self.fields and field not in self.errors:
                self.add_error(field, f"{issue.path}: {issue.message}")
        return cleaned


@admin.register(JobKindVersion)
class JobKindVersionAdmin(admin.ModelAdmin):
    """History of the registry. A version's contract never changes; a registry admin sets when
    plans pinned to an older version stop running and how they migrate off it."""

    form = JobKindVersionForm
    list_display = ["kind", "version", "changed", "sunset_at", "steps", "created_by", "created_at"]
    list_filter = ["kind"]
    ordering = ["kind", "-version"]
    readonly_fields = ["kind", "version", "changed", "contract_json", "created_by", "created_at"]
    fields = [
        "kind",
        "version",
        "changed",
        "contract_json",
        "sunset_at",
        "migration",
        "created_by",
        "created_at",
    ]

    # The registry's own permission governs its history: whoever may edit job kinds.
    def has_module_permission(self, request: HttpRequest) -> bool:
        return can_edit_registry(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_edit_registry(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_edit_registry(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come into being by editing the kind

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # plans may pin any of them

    @admin.display(description="Changed")
    def changed(self, obj: JobKindVersion) -> str:
        return ", ".join(obj.changed_fields) or "first version"

    @admin.display(description="Steps")
    def steps(self, obj: JobKindVersion) -> int:
        return len(obj.migration or [])

    @admin.display(description="Contract")
    def contract_json(self, obj: JobKindVersion) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.contract, indent=2, ensure_ascii=False))

    def save_model(
        self, request: HttpRequest, obj: JobKindVersion, form: Any, change: bool
    ) -> None:
        job_kind_version_update(
            row=obj,
            user=request.user,
            via="admin",
            client_ip=client_ip(request),
            sunset_at=form.cleaned_data.get("sunset_at"),
            migration=form.cleaned_data.get("migration") or [],
        )
