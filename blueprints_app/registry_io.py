"""The registry as data: JSON export and import with versions, and docs/registry.md.

The export is what `GET /api/v1/job-kinds/{kind}/` and `.../versions/` return, for every kind,
under a small header; `hxo_registry import` reads the same shape back. An import writes only
through `job_kind_save` and `job_kind_version_update` (so it is validated like an admin edit)
and is all-or-nothing: one refused kind and nothing is written. Version numbers travel with
the kinds, so a revision pinned to `deploy.pack` v2 means the same contract on both sides; an
import that would take a kind backwards, or whose history contradicts the local one, is
refused.

`registry_markdown` renders docs/registry.md from the registry: the same rows always give the
same bytes (no timestamps, sorted everywhere, settings-dependent values left out), so a test
can tell when the committed file is out of date.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.utils.dateparse import parse_datetime

from blueprints_app.contract import CONTRACT_VERSION
from blueprints_app.models import VERSIONED_FIELDS, JobKind, JobKindVersion
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from blueprints_app.serializers import JobKindSerializer, JobKindVersionSerializer
from blueprints_app.services import (
    VERSION_IMPORTED,
    JobKindInvalid,
    audit_registry_write,
    contract_changes,
    job_kind_save,
    job_kind_version_update,
)
from blueprints_app.versions import component_lifecycle
from hxo_site import codes

FORMAT = "hxo-registry"
FORMAT_VERSION = 1


def registry_export() -> dict[str, Any]:
    kinds = list(JobKind.objects.order_by("kind"))
    history: dict[str, list[JobKindVersion]] = {}
    for row in JobKindVersion.objects.select_related("created_by").order_by("kind", "version"):
        history.setdefault(row.kind, []).append(row)
    entries = []
    for kind in kinds:
        entry = dict(JobKindSerializer(kind).data)
        context = {"current_version": kind.version}
        entry["versions"] = JobKindVersionSerializer(
            history.get(kind.kind, []), many=True, context=context
        ).data
        entries.append(entry)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "contract_version": CONTRACT_VERSION,
        "kinds": json.loads(json.dumps(entries)),  # plain dicts and lists, no OrderedDicts
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


# --- Import ---------------------------------------------------------------------------------


class RegistryImportError(Exception):
    """The import was refused; nothing was written. `errors` are `{path, code, message}`."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors[:5]))
        self.errors = errors


@dataclasses.dataclass
class KindImport:
    kind: str
    action: str  # created, updated, unchanged
    version_from: int | None
    version_to: int
    versions_added: list[int]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Rollback(Exception):
    pass


def _issue(path: str, code: str, message: str) -> dict[str, str]:
    return {"path": path, "code": code, "message": message}


def _drf_errors(detail: Any, prefix: str) -> list[dict[str, str]]:
    """A DRF ValidationError detail, flattened to issues with paths under `prefix`."""
    found: list[dict[str, str]] = []
    if isinstance(detail, Mapping):
        for key, value in detail.items():
            found += _drf_errors(value, f"{prefix}.{key}" if key != "non_field_errors" else prefix)
    elif isinstance(detail, list):
        for item in detail:
            found += _drf_errors(item, prefix)
    else:
        found.append(_issue(prefix, getattr(detail, "code", codes.INVALID_VALUE), str(detail)))
    return found


def _ordered(entries: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Entries with each kind's replacement before it (validate_job_kind checks it exists)."""
    pending = list(enumerate(entries))
    names = {e.get("kind") for e in entries}
    placed: set[Any] = set()
    ordered: list[tuple[int, dict[str, Any]]] = []
    while pending:
        ready = [
            (i, e)
            for i, e in pending
            if e.get("replaced_by") in ("", None)
            or e.get("replaced_by") not in names
            or e.get("replaced_by") in placed
        ]
        if not ready:  # a replacement cycle: let validation report what it will
            ready = pending[:1]
        for item in ready:
            ordered.append(item)
            placed.add(item[1].get("kind"))
            pending.remove(item)
    return ordered


VERSION_KEYS = {
    "kind",
    "version",
    "current",
    "contract",
    "changed_fields",
    "sunset_at",
    "migration",
    "created_by",
    "created_at",
}


def _import_kind(i: int, entry: Any, user: Any) -> KindImport:
    path = f"kinds[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise RegistryImportError([_issue(path, codes.INVALID_TYPE, "a kind is an object")])
    name = entry["kind"]
    version = entry.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RegistryImportError(
            [_issue(f"{path}.version", codes.INVALID_VALUE, "version is a number >= 1")]
        )
    versions = entry.get("versions", [])
    if not isinstance(versions, list) or not all(
        isinstance(v, dict)
        and isinstance(v.get("version"), int)
        and not isinstance(v.get("version"), bool)
        and 1 <= v["version"] <= version
        and isinstance(v.get("contract"), dict)
        and v.get("kind", name) == name
        for v in versions
    ):
        raise RegistryImportError(
            [
                _issue(
                    f"{path}.versions",
                    codes.INVALID_VALUE,
                    f"versions is a list of {{version, contract, ...}}, none after {version}",
                )
            ]
        )
    versions = sorted(versions, key=lambda v: v["version"])
    problems = [
        _issue(f"{path}.versions[{j}].{k}", codes.UNKNOWN_FIELD, "unknown field")
        for j, item in enumerate(versions)
        for k in sorted(set(item) - VERSION_KEYS)
    ]
    local = {row.version: row for row in JobKindVersion.objects.filter(kind=name)}
    for j, item in enumerate(versions):
        row = local.get(item["version"])
        differs = contract_changes(row.contract, item["contract"]) if row else []
        if differs:
            problems.append(
                _issue(
                    f"{path}.versions[{j}].contract",
                    codes.INVALID_VALUE,
                    f"version {item['version']} of {name} differs from this registry's "
                    f"({', '.join(differs)})",
                )
            )
    if problems:
        raise RegistryImportError(problems)

    existing = JobKind.objects.filter(kind=name).first()
    before = dumps(JobKindSerializer(existing).data) if existing else None
    body = {k: v for k, v in entry.items() if k not in ("versions", "version")}
    serializer = JobKindSerializer(instance=existing, data=body)
    if not serializer.is_valid():
        raise RegistryImportError(_drf_errors(serializer.errors, path))
    job_kind = existing or JobKind()
    version_before = existing.version if existing else None
    for field, value in serializer.validated_data.items():
        setattr(job_kind, field, value)
    # The kind first, at the file's version: history rows the file adds below are older, and
    # saving after them would count them as versions this registry already went through.
    try:
        job_kind_save(job_kind=job_kind, user=user, version=version, via="import")
    except JobKindInvalid as exc:
        raise RegistryImportError(
            [_issue(f"{path}.{e.path}", e.code, e.message) for e in exc.result.errors]
        ) from None
    added = []
    touched = False  # a version's sunset or migration steps changed
    for j, item in enumerate(versions):
        number = item["version"]
        at = f"{path}.versions[{j}]"
        contract = {f: item["contract"].get(f) for f in VERSIONED_FIELDS}
        row, created = JobKindVersion.objects.get_or_create(
            kind=name,
            version=number,
            defaults={
                "contract": {"kind": name, "version": number, **contract},
                "changed_fields": list(item.get("changed_fields") or []),
            },
        )
        if created:
            added.append(number)
            audit_registry_write(
                action=VERSION_IMPORTED,
                user=user,
                via="import",
                client_ip=None,
                object_type="jobkindversion",
                object_id=f"{name}@{number}",
                before=None,
                after=row.contract,
            )
        elif contract_changes(row.contract, contract):
            raise RegistryImportError(
                [
                    _issue(
                        f"{at}.contract",
                        codes.INVALID_VALUE,
                        f"version {number} of {name} does not match the kind's own fields",
                    )
                ]
            )
        updates: dict[str, Any] = {}
        if "migration" in item and item["migration"] != row.migration:
            updates["migration"] = item["migration"]
        if number < version and "sunset_at" in item:
            sunset_at = _datetime(item["sunset_at"], f"{at}.sunset_at")
            if sunset_at != row.sunset_at:
                updates["sunset_at"] = sunset_at
        if updates:
            try:
                job_kind_version_update(row=row, user=user, via="import", **updates)
            except JobKindInvalid as exc:
                raise RegistryImportError(
                    [_issue(f"{at}.{e.path}", e.code, e.message) for e in exc.result.errors]
                ) from None
            touched = True
    after = dumps(JobKindSerializer(JobKind.objects.get(kind=name)).data)
    if existing is None:
        action = "created"
    elif before != after or added or touched:
        action = "updated"
    else:
        action = "unchanged"
    return KindImport(name, action, version_before, job_kind.version, added)


def _datetime(value: Any, path: str) -> Any:
    if value is None:
        return None
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is None:
        raise RegistryImportError([_issue(path, codes.INVALID_VALUE, "an ISO 8601 date-time")])
    return parsed


def registry_import(*, data: Any, user: Any = None, dry_run: bool = False) -> list[KindImport]:
    """Import an export; all-or-nothing. `dry_run` validates everything and writes nothing."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RegistryImportError(
            [_issue("format", codes.INVALID_VALUE, f'not an HXO registry export ("{FORMAT}")')]
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise RegistryImportError(
            [
                _issue(
                    "format_version",
                    codes.INVALID_VALUE,
                    f"format_version {data.get('format_version')!r}; "
                    f"this HXO reads {FORMAT_VERSION}",
                )
            ]
        )
    entries = data.get("kinds")
    if not isinstance(entries, list):
        raise RegistryImportError([_issue("kinds", codes.INVALID_TYPE, "kinds is a list")])
    names = [e.get("kind") for e in entries if isinstance(e, dict)]
    duplicates = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if duplicates:
        raise RegistryImportError(
            [_issue("kinds", codes.INVALID_VALUE, f"listed twice: {', '.join(duplicates)}")]
        )
    report: list[KindImport] = []
    try:
        with transaction.atomic():
            for i, entry in _ordered(entries):
                report.append(_import_kind(i, entry, user))
            if dry_run:
                raise _Rollback
    except _Rollback:
        pass
    return sorted(report, key=lambda r: r.kind)


# --- docs/registry.md -----------------------------------------------------------------------

# Params whose choices come from settings (workspaces, targets): documented by what they name,
# not by this machine's values, so the page is the same everywhere.
SETTINGS_WIDGETS = {
    "workspace": "a workspace name from `HXO_WORKSPACES`",
    "target": "a database target name from `HXO_DATABASE_TARGETS`",
}


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _schema_table(schema: Mapping[str, Any]) -> list[str]:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping) or not props:
        return ["No declared fields."]
    required = set(schema.get("required") or [])
    lines = ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
    for name in sorted(props):
        prop = props[name] if isinstance(props[name], Mapping) else {}
        widget = prop.get("x-hxo-widget")
        if widget in SETTINGS_WIDGETS:
            lines.append(
                f"| `{name}` | {SETTINGS_WIDGETS[widget]} | yes, unless `demo` is registered "
                f"| `demo` when registered | {_cell(prop.get('description', ''))} |"
            )
            continue
        typ = prop.get("type", "")
        if "const" in prop:
            typ = f"`{_cell(prop['const'])}`"
        elif "enum" in prop:
            typ = f"{typ}: " + ", ".join(f"`{_cell(v)}`" for v in prop["enum"])
        default = f"`{_cell(prop['default'])}`" if "default" in prop else ""
        meaning = prop.get("description") or prop.get("title") or ""
        yes = "yes" if name in required else ""
        lines.append(f"| `{name}` | {_cell(typ)} | {yes} | {default} | {_cell(meaning)} |")
    return lines


def _lifecycle_text(cls: type) -> str:
    life = component_lifecycle(cls)
    if not life.announced:
        return ""
    parts = ["deprecated"]
    if life.sunset_at:
        parts.append(f"sunset {life.sunset_at:%Y-%m-%d}")
    if life.replaced_by:
        parts.append(f"use `{life.replaced_by}`")
    return " (" + ", ".join(parts) + ")"


def registry_markdown() -> str:
    kinds = list(JobKind.objects.order_by("kind"))
    history: dict[str, list[JobKindVersion]] = {}
    for row in JobKindVersion.objects.order_by("kind", "version"):
        history.setdefault(row.kind, []).append(row)
    out = [
        "# HXO job-kind registry",
        "",
        "<!-- Generated by `manage.py hxo_registry docs` from a freshly migrated registry",
        "     (`make registry-docs`). Do not edit: tests/blueprints_app/test_registry_io.py",
        "     fails when this file is out of date. -->",
        "",
        f"Blueprint contract {CONTRACT_VERSION}. Each kind lists what a stage of it may be split "
        "by and executed by, its safety policy and schemas, and its versions: a plan revision "
        "runs under the versions it pins until they are sunset (see README, “Evolving the "
        "registry”).",
        "",
        "| Job Kind | Version | Partitioners | Executors | Non-Idempotent | Dry-Run | SLO (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in kinds:
        flag = " (deprecated)" if k.deprecated or k.sunset_at else ""
        out.append(
            f"| `{k.kind}`{flag} | {k.version} | {', '.join(k.partitioners)} | "
            f"{', '.join(k.executors)} | {'Yes' if k.allow_non_idempotent else 'No'} | "
            f"{'Yes' if k.require_dry_run else 'No'} | {k.default_slo_ms} |"
        )
    for k in kinds:
        out += ["", "---", "", f"## `{k.kind}`", "", k.description.strip(), ""]
        if k.deprecated or k.sunset_at:
            note = "**Deprecated**"
            if k.sunset_at:
                note += f", sunset on {k.sunset_at:%Y-%m-%d}"
            if k.replaced_by:
                note += f"; replaced by `{k.replaced_by}`"
            out += [note + ".", ""]
        out += [
            f"- **Version**: {k.version}",
            f"- **Safety policy**: `allow_non_idempotent: {str(k.allow_non_idempotent).lower()}`, "
            f"`require_dry_run: {str(k.require_dry_run).lower()}`, "
            f"approvals required: {k.required_approvals}",
            f"- **Default SLO**: {k.default_slo_ms} ms",
            f"- **Result status**: `{k.result_status}`",
            "",
            "### Partitioners",
        ]
        for name in k.partitioners:
            cls = PARTITIONERS.get(name)
            if cls is None:
                out += ["", f"#### `{name}` (not registered)"]
                continue
            out += ["", f"#### `{name}`{_lifecycle_text(cls)}", ""]
            if cls.description:
                out += [cls.description, ""]
            out += ["Params:", "", *_schema_table(cls.get_params_schema())]
        out += ["", "### Executors", ""]
        for name in k.executors:
            cls = EXECUTORS.get(name)
            if cls is None:
                out.append(f"- `{name}` (not registered)")
                continue
            facts = "idempotent" if cls.idempotent else "not idempotent"
            if not cls.supports_dry_run:
                facts += ", no dry-run"
            text = f" {cls.description}" if cls.description else ""
            out.append(f"- `{name}`{_lifecycle_text(cls)} ({facts}).{text}")
        out += ["", "### Input schema", "", *_schema_table(k.input_schema)]
        out += ["", "### Output schema", "", *_schema_table(k.output_schema)]
        rows = history.get(k.kind, [])
        out += ["", "### Versions", "", "| version | changed | sunset | migration steps |"]
        out.append("|---|---|---|---|")
        for row in rows:
            changed = ", ".join(row.changed_fields) if row.changed_fields else "first version"
            sunset = f"{row.sunset_at:%Y-%m-%d}" if row.sunset_at else ""
            steps = ", ".join(s.get("op", "?") for s in row.migration if isinstance(s, dict))
            current = " (current)" if row.version == k.version else ""
            out.append(f"| {row.version}{current} | {changed} | {sunset} | {steps} |")
    return "\n".join(out).rstrip() + "\n"
