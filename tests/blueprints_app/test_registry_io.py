"""The registry as data: `hxo_registry export|import|docs` and docs/registry.md."""

from __future__ import annotations

import copy
import json
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.registry_io import (
    RegistryImportError,
    registry_export,
    registry_import,
    registry_markdown,
)
from blueprints_app.services import job_kind_delete, job_kind_save

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def entry(data: dict, kind: str) -> dict:
    return next(k for k in data["kinds"] if k["kind"] == kind)


def bump(data: dict, kind: str, **changes: object) -> dict:
    """`data` with a version N + 1 of `kind` carrying `changes`, as another registry would
    export it."""
    data = copy.deepcopy(data)
    e = entry(data, kind)
    e.update(changes)
    e["version"] += 1
    contract = {**e["versions"][-1]["contract"], **changes, "version": e["version"]}
    e["versions"].append(
        {"version": e["version"], "contract": contract, "changed_fields": sorted(changes)}
    )
    return data


def test_the_export_holds_every_kind_with_its_api_fields_and_versions():
    data = json.loads(run("hxo_registry", "export"))

    assert data["format"] == "hxo-registry" and data["format_version"] == 1
    assert [k["kind"] for k in data["kinds"]] == sorted(
        JobKind.objects.values_list("kind", flat=True)
    )
    pack = entry(data, "deploy.pack")
    assert pack["safety_policy"] == {
        "allow_non_idempotent": False,
        "require_dry_run": False,
        "require_findings_ack": False,
    }
    assert [v["version"] for v in pack["versions"]] == [1]
    assert pack["versions"][0]["contract"]["partitioners"] == ["by_filesize", "by_module"]


def test_an_export_imported_into_the_same_registry_changes_nothing():
    before = registry_export()

    report = registry_import(data=before)

    assert {r.action for r in report} == {"unchanged"}
    assert registry_export() == before


def test_an_import_carries_versions_across_registries(tmp_path: Path):
    source = bump(registry_export(), "deploy.pack", default_slo_ms=5000)
    source = bump(source, "deploy.pack", partitioners=["by_module"])
    entry(source, "deploy.pack")["versions"][0]["sunset_at"] = "2031-01-01T00:00:00Z"
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(source))

    out = run("hxo_registry", "import", str(path))

    assert "deploy.pack: updated (v1 → v3, history +[2])" in out
    pack = JobKind.objects.get(kind="deploy.pack")
    assert (pack.version, pack.default_slo_ms, pack.partitioners) == (3, 5000, ["by_module"])
    rows = JobKindVersion.objects.filter(kind="deploy.pack").order_by("version")
    assert [r.version for r in rows] == [1, 2, 3]
    assert rows[1].contract["default_slo_ms"] == 5000
    assert rows[0].sunset_at is not None
    assert entry(registry_export(), "deploy.pack")["versions"][1]["contract"] == rows[1].contract


def test_an_import_creates_missing_kinds_through_the_validator():
    data = registry_export()
    job_kind_delete(job_kind=JobKind.objects.get(kind="docs.index"))
    JobKindVersion.objects.filter(kind="docs.index").delete()

    report = registry_import(data=data)

    assert [(r.kind, r.action) for r in report if r.action != "unchanged"] == [
        ("docs.index", "created")
    ]
    assert JobKind.objects.get(kind="docs.index").version == 1


def test_an_import_is_all_or_nothing():
    data = bump(registry_export(), "assets.index", default_slo_ms=7)
    entry(data, "deploy.pack")["partitioners"] = ["by_nothing"]
    before = registry_export()

    with pytest.raises(RegistryImportError) as refused:
        registry_import(data=data)

    paths = [e["path"] for e in refused.value.errors]
    assert any(p.startswith("kinds[") and "partitioners" in p for p in paths)
    assert registry_export() == before  # assets.index, imported first, was rolled back too


def test_an_import_that_would_take_a_kind_backwards_is_refused():
    old = registry_export()
    row = JobKind.objects.get(kind="deploy.pack")
    row.default_slo_ms = 5
    job_kind_save(job_kind=row)

    with pytest.raises(RegistryImportError) as refused:
        registry_import(data=old)

    assert "would go backwards" in refused.value.errors[0]["message"]
    assert JobKind.objects.get(kind="deploy.pack").default_slo_ms == 5


def test_an_import_whose_history_contradicts_this_registry_is_refused():
    data = registry_export()
    entry(data, "deploy.pack")["versions"][0]["contract"]["default_slo_ms"] = 1

    with pytest.raises(RegistryImportError) as refused:
        registry_import(data=data)

    assert refused.value.errors[0]["path"].endswith("versions[0].contract")


def test_a_dry_run_import_reports_and_writes_nothing(tmp_path: Path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bump(registry_export(), "deploy.pack", default_slo_ms=5)))

    out = run("hxo_registry", "import", str(path), "--dry-run")

    assert "deploy.pack: updated (v1 → v2" in out and "nothing written" in out
    assert JobKind.objects.get(kind="deploy.pack").version == 1
    assert not JobKindVersion.objects.filter(kind="deploy.pack", version=2).exists()


@pytest.mark.parametrize(
    "text", ["not json", '{"format": "other"}', '{"format": "hxo-registry", "format_version": 9}']
)
def test_the_import_command_refuses_what_is_not_an_export(tmp_path: Path, text: str):
    path = tmp_path / "r.json"
    path.write_text(text)

    with pytest.raises(CommandError):
        run("hxo_registry", "import", str(path))


def test_only_a_registry_admin_may_import(tmp_path: Path, operator, admiral):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bump(registry_export(), "deploy.pack", default_slo_ms=5)))

    with pytest.raises(CommandError, match="not a registry admin"):
        run("hxo_registry", "--user", operator.username, "import", str(path))
    run("hxo_registry", "--user", admiral.username, "import", str(path))

    assert JobKindVersion.objects.get(kind="deploy.pack", version=2).created_by == admiral


# --- docs/registry.md -------------------------------------------------------------------------


def test_the_committed_registry_docs_are_up_to_date():
    committed = Path(settings.BASE_DIR, "docs", "registry.md").read_text()

    assert committed == registry_markdown(), (
        "docs/registry.md is out of date with the registry: run `make registry-docs` and "
        "commit the result"
    )


def test_the_docs_are_the_same_whatever_the_machines_workspaces(settings):
    before = registry_markdown()
    settings.HXO_WORKSPACES = {"elsewhere": "/srv"}
    settings.HXO_DATABASE_TARGETS = {}

    assert registry_markdown() == before


def test_the_docs_show_versions_and_deprecations():
    row = JobKind.objects.get(kind="deploy.pack")
    row.default_slo_ms = 5
    job_kind_save(job_kind=row)
    row.deprecated, row.replaced_by = True, "deploy.prime"
    job_kind_save(job_kind=row)

    text = registry_markdown()

    assert "| `deploy.pack` (deprecated) | 2 |" in text
    assert "**Deprecated**; replaced by `deploy.prime`." in text
    assert "| 2 (current) | default_slo_ms |  |  |" in text


def test_the_docs_check_option_fails_on_a_stale_file(tmp_path: Path):
    path = tmp_path / "registry.md"
    run("hxo_registry", "docs", "--output", str(path))
    assert "up to date" in run("hxo_registry", "docs", "--output", str(path), "--check")

    path.write_text("stale\n")
    with pytest.raises(SystemExit) as exited:
        run("hxo_registry", "docs", "--output", str(path), "--check")
    assert exited.value.code == 1
