"""The dashboard's ordinary Django forms: decisions, apply, JSON import, list filters, search.

The plan editor's form engine (JSON Schema → fields, posted form → document, error placement)
is the `runs_app.editor` package.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from hxo_site import parameters
from runs_app.models import RUN_PUBLIC_STATES, PartitionState, RunMode, RunState


class DecisionForm(forms.Form):
    comment = forms.CharField(
        label="Comment",
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded with your decision and in the audit log.",
    )
    acknowledge_findings = forms.BooleanField(
        required=False,
        label="I have read the high-severity findings and accept the risk",
    )


class ApplyForm(forms.Form):
    dry_run = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    force_rerun = forms.BooleanField(
        required=False,
        label="Re-run partitions that already succeeded in an earlier apply",
    )


class JsonImportForm(forms.Form):
    document = forms.CharField(
        label="Plan document (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 24, "class": "mono", "spellcheck": "false"}),
    )
    file = forms.FileField(label="Or import a file", required=False)
    comment = forms.CharField(label="Revision comment", required=False, max_length=500)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("file")
        if upload is not None:
            if upload.size > settings.HXO_MAX_BODY_BYTES:
                raise forms.ValidationError("the file is too large")
            try:
                data["document"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise forms.ValidationError("the file is not UTF-8 text") from None
        return data


class PartitionFilterForm(forms.Form):
    stage = forms.ChoiceField(label="Stage", required=False)
    state = forms.ChoiceField(
        label="State",
        required=False,
        choices=[("", "Any state"), *PartitionState.choices],
    )

    def __init__(self, *args: Any, stage_ids: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["stage"].choices = [("", "All stages")] + [(s, s) for s in stage_ids]


class IdField(forms.CharField):
    """A database id typed in a form or a URL, through the one parser (ASCII digits only,
    1..2^63-1): Django's IntegerField reads '٣' as 3 and cannot bound to the column."""

    def to_python(self, value: Any) -> int | None:  # type: ignore[override]
        value = super().to_python(value)
        if value in self.empty_values:
            return None
        try:
            return parameters.parse_id(value, name=self.label or "id")
        except parameters.ParameterError as exc:
            raise forms.ValidationError(exc.message, code=exc.code) from None


class RunFilterForm(forms.Form):
    # The public states (`paused` included: a running run whose pause flag is set).
    state = forms.ChoiceField(
        label="State",
        required=False,
        choices=[
            ("", "Any state"),
            *((s, dict(RunState.choices).get(s, "Paused")) for s in RUN_PUBLIC_STATES),
        ],
    )
    mode = forms.ChoiceField(
        label="Mode", required=False, choices=[("", "Dry-runs and applies"), *RunMode.choices]
    )
    plan = IdField(label="Plan id", required=False, strip=False)


class AuditFilterForm(forms.Form):
    actor = forms.CharField(label="User", required=False, max_length=150)
    action = forms.ChoiceField(label="Action", required=False)
    object_type = forms.ChoiceField(label="Object type", required=False)
    object_id = forms.CharField(label="Object id", required=False, max_length=64)
    since = forms.DateTimeField(
        label="From",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
    )
    until = forms.DateTimeField(
        label="To",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
    )

    def __init__(
        self, *args: Any, actions: list[str], object_types: list[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "Any action")] + [(a, a) for a in actions]
        self.fields["object_type"].choices = [("", "Any object")] + [(t, t) for t in object_types]


class SearchForm(forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=200)
