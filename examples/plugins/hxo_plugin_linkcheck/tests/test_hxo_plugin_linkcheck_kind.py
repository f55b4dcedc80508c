"""`docs.linkcheck` as HXO runs it: a registry admin creates the kind in the admin, and plans
using it validate, dry-run, get approved and apply like those of the built-in kinds."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.files.storage import storages
from django.test import Client
from hxo_plugin_linkcheck.components import KIND, KIND_DEFINITION

from blueprints_app.models import JobKind
from blueprints_app.registry import EXECUTORS, PARTITIONERS, plugin_entry_points
from blueprints_app.registry_io import registry_import
from runs_app import services, tasks
from runs_app.models import Partition, Plan, Run, RunState

PLUGIN_DIR = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.django_db


def drain(run: Run) -> Run:
    """The drainer in this thread, inside the test's transaction (no flush between tests)."""
    with mock.patch.object(tasks, "close_old_connections", lambda: None):
        for _ in range(50):
            tasks.drain(run.pk, budget_s=30)
            run.refresh_from_db()
            if run.is_finished:
                return run
    raise AssertionError(f"run {run.pk} did not finish: {run.state}")


def create_kind_in_the_admin(admiral: Any, **overrides: Any) -> JobKind:
    definition = {**KIND_DEFINITION, **overrides}
    form = {
        "kind": definition["kind"],
        "description": definition["description"],
        "partitioners": definition["partitioners"],
        "executors": definition["executors"],
        "required_approvals": 1,
        "default_slo_ms": definition["default_slo_ms"],
        "result_status": definition["result_status"],
        "input_schema": json.dumps(definition["input_schema"]),
        "output_schema": json.dumps(definition["output_schema"]),
        "sunset_at_0": "",
        "sunset_at_1": "",
        "replaced_by": "",
        "_save": "Save",
    }
    for flag in ("allow_non_idempotent", "require_dry_run"):
        if definition[flag]:
            form[flag] = "on"
    client = Client()
    client.force_login(admiral)
    response = client.post("/admin/blueprints_app/jobkind/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    return JobKind.objects.get(kind=KIND)


def linkcheck_plan(operator: Any, workspace: str = "site", **params: Any) -> Plan:
    stage = {
        "id": "links",
        "kind": KIND,
        "partitioner": "by_doc_pages",
        "executor": "docs_linkcheck",
        "params": {"workspace": workspace, "root": "docs", "pages_per_partition": 2, **params},
    }
    return services.plan_create(actor=operator, document={"name": "docs", "stages": [stage]})


def broken_links(run: Run) -> list[tuple[str, str, str]]:
    found = []
    for p in Partition.objects.filter(run=run).order_by("index"):
        body = p.preview if run.mode == "dry_run" else (p.output or {})
        found += [(b["page"], b["target"], b["reason"]) for b in body.get("broken_links", [])]
    return sorted(found)


# --- The plugin path --------------------------------------------------------------------------


def test_the_package_declares_its_components_under_the_hxo_plugins_entry_point():
    project = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())

    assert project["project"]["entry-points"]["hxo.plugins"] == {
        "linkcheck": "hxo_plugin_linkcheck.components"
    }
    assert PARTITIONERS["by_doc_pages"].__module__ == "hxo_plugin_linkcheck.components"
    assert EXECUTORS["docs_linkcheck"].__module__ == "hxo_plugin_linkcheck.components"


def test_an_installed_copy_is_found_through_its_entry_point():
    names = {ep.name: ep.value for ep in plugin_entry_points()}
    if "linkcheck" not in names:
        pytest.skip("hxo-plugin-linkcheck is not pip-installed in this environment")
    assert names["linkcheck"] == "hxo_plugin_linkcheck.components"


def test_kind_json_is_the_kind_definition_and_imports_through_the_registry():
    data = json.loads((PLUGIN_DIR / "kind.json").read_text())

    [report] = registry_import(data=data)

    assert (report.kind, report.action, report.version_to) == (KIND, "created", 1)
    stored = JobKind.objects.get(kind=KIND)
    for field, value in KIND_DEFINITION.items():
        assert getattr(stored, field) == value


# --- Through the engine -----------------------------------------------------------------------


def test_created_in_the_admin_validated_dry_run_approved_and_applied(
    docs_workspace: Path, admiral, operator, approver, api_client_for
):
    # A registry admin who wants a sign-off on the docs before a release requires a dry-run.
    kind = create_kind_in_the_admin(admiral, require_dry_run=True)
    assert kind.version == 1 and kind.require_dry_run

    stage = {
        "id": "links",
        "kind": KIND,
        "partitioner": "by_doc_pages",
        "executor": "docs_linkcheck",
        "params": {"workspace": "site", "pages_per_partition": 2},
    }
    validated = api_client_for(operator).post("/api/v1/validate/", {"stage": stage}, format="json")
    assert validated.json() == {"valid": True, "errors": [], "warnings": []}

    plan = linkcheck_plan(operator)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    assert dry.state == RunState.AWAITING_APPROVAL
    partitions = Partition.objects.filter(run=dry).order_by("index")
    labels = list(partitions.values_list("label", flat=True))
    assert [label.split(":")[0] for label in labels] == [
        "/docs/ #0",
        "/docs/api/ #0",
        "/docs/guides/ #0",
    ]
    previews = [p.preview for p in Partition.objects.filter(run=dry).order_by("index")]
    assert all(p["broken"] == 0 for p in previews)
    assert "would check 2 pages" in previews[0]["summary"]
    assert previews[0]["external"] == 1  # counted, never fetched
    assert not Path(storages["artifacts"].path("")).exists() or not list(
        Path(storages["artifacts"].path("")).rglob("*.json")
    )

    services.run_approve(run=dry, actor=approver)
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.SUCCEEDED
    outputs = [p.output for p in Partition.objects.filter(run=run).order_by("index")]
    assert [o["status"] for o in outputs] == ["checked"] * 3
    assert sum(o["pages_checked"] for o in outputs) == 6
    assert sum(o["links_checked"] for o in outputs) == 12  # the fenced one is not a link
    report = json.loads(storages["artifacts"].open(outputs[0]["report"]).read())
    assert report["broken_links"] == [] and report["workspace"] == "site"
    assert len(run.merkle_root) == 64


def test_broken_links_are_reported_by_the_dry_run_and_fail_the_apply(
    docs_workspace: Path, admiral, operator, settings
):
    settings.HXO_RETRY_BACKOFF_MS = 0
    create_kind_in_the_admin(admiral)
    (docs_workspace / "docs" / "guides" / "configure.md").write_text("# Configure\n")
    (docs_workspace / "docs" / "changelog.md").write_text(
        "# Changelog\n\n[gone](old.md) [out](../../secret.txt) [route](/docs/nowhere/) "
        "[here](#nope) [skipped](old-*.md) [site](/shop/)\n"
    )
    plan = linkcheck_plan(operator, ignore=["old-*"])

    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))

    assert dry.state == RunState.SUCCEEDED  # docs.linkcheck needs no approval as shipped
    assert broken_links(dry) == [
        ("docs/changelog.md", "#nope", "no anchor #nope in docs/changelog.md"),
        ("docs/changelog.md", "../../secret.txt", "leaves the workspace"),
        ("docs/changelog.md", "/docs/nowhere/", "no page has the route /docs/nowhere/"),
        ("docs/changelog.md", "old.md", "no such page or file"),
        (
            "docs/guides/install.md",
            "configure.md#environment-variables",
            "no anchor #environment-variables in docs/guides/configure.md",
        ),
    ]
    first = Partition.objects.filter(run=dry).order_by("index").first()
    assert first.preview["summary"].endswith("4 broken (the apply would fail)")

    run = drain(services.run_apply(plan=plan, actor=operator))

    assert run.state == RunState.FAILED
    failed = Partition.objects.filter(run=run, state="failed").first()
    assert failed is not None and failed.error["code"] == "broken_links"


def test_with_fail_on_broken_off_the_apply_records_them_and_succeeds(
    docs_workspace: Path, admiral, operator
):
    create_kind_in_the_admin(admiral)
    (docs_workspace / "docs" / "changelog.md").write_text("[gone](old.md)\n")
    plan = linkcheck_plan(operator, fail_on_broken=False)

    run = drain(services.run_apply(plan=plan, actor=operator))

    assert run.state == RunState.SUCCEEDED
    assert broken_links(run) == [("docs/changelog.md", "old.md", "no such page or file")]


def test_a_page_changed_after_the_dry_run_makes_the_approval_stale(
    docs_workspace: Path, admiral, operator, approver
):
    from hxo_site import codes

    create_kind_in_the_admin(admiral, require_dry_run=True)
    plan = linkcheck_plan(operator)
    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))
    services.run_approve(run=dry, actor=approver)
    (docs_workspace / "docs" / "api" / "orders.md").write_text("# Orders\n")

    # A changed file is found when the worker partitions the apply: the run fails as stale,
    # with the diff, and nothing runs.
    run = drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry.pk))

    assert run.state == RunState.FAILED
    assert run.error["code"] == codes.STALE_PLAN
    assert not run.partitions.exists()


def test_the_demo_documentation_has_no_broken_link(admiral, operator):
    create_kind_in_the_admin(admiral)
    plan = linkcheck_plan(operator, workspace="demo", pages_per_partition=50)

    dry = drain(services.run_start_dry_run(plan=plan, actor=operator))

    assert dry.state == RunState.SUCCEEDED
    assert broken_links(dry) == []
    checked = sum(p.preview["links_checked"] for p in Partition.objects.filter(run=dry))
    assert checked >= 40
