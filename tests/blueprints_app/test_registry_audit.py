"""Every registry write is audited: who, what, when, from where, the changed fields before and
after; a loosened safety policy says so in the event's action (attack finding 6: one admiral
switched deploy.migrate's dry-run requirement off through the API and nothing was recorded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.registry_io import registry_export
from blueprints_app.services import (
    KIND_CREATED,
    KIND_DELETED,
    KIND_UPDATED,
    SAFETY_LOOSENED,
    VERSION_IMPORTED,
    VERSION_UPDATED,
    job_kind_save,
)
from hxo_site.models import AuditEvent
from tests.blueprints_app.test_admin import ADD_URL, CHANGE_URL, form_data
from tests.blueprints_app.test_api_job_kinds import NEW_KIND
from tests.blueprints_app.test_registry_io import bump

pytestmark = pytest.mark.django_db

ABSENT = object()


def kind(name: str) -> JobKind:
    return JobKind.objects.get(kind=name)


def set_fields(ctx: dict[str, Any], name: str, **changes: Any) -> None:
    """A change made before the write under test (its event is not the one counted)."""
    row = kind(name)
    for field, value in changes.items():
        setattr(row, field, value)
    job_kind_save(job_kind=row)
    ctx["first"] = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()


def admin(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_patch_dry_run_off(ctx: dict[str, Any]) -> Any:
    return ctx["api"].patch(
        "/api/v1/job-kinds/deploy.migrate/",
        {"safety_policy": {"allow_non_idempotent": True, "require_dry_run": False}},
        format="json",
    )


def api_patch_fewer_approvals(ctx: dict[str, Any]) -> Any:
    set_fields(ctx, "deploy.migrate", required_approvals=2)
    return ctx["api"].patch(
        "/api/v1/job-kinds/deploy.migrate/", {"required_approvals": 1}, format="json"
    )


def api_patch_non_idempotent_on(ctx: dict[str, Any]) -> Any:
    return ctx["api"].patch(
        "/api/v1/job-kinds/deploy.pack/",
        {"safety_policy": {"allow_non_idempotent": True, "require_dry_run": False}},
        format="json",
    )


def api_patch_tightened(ctx: dict[str, Any]) -> Any:
    return ctx["api"].patch(
        "/api/v1/job-kinds/deploy.pack/",
        {"safety_policy": {"allow_non_idempotent": False, "require_dry_run": True}},
        format="json",
    )


def api_put(ctx: dict[str, Any]) -> Any:
    body = ctx["api"].get("/api/v1/job-kinds/docs.index/").json()
    body["description"] = "rewritten"
    return ctx["api"].put("/api/v1/job-kinds/docs.index/", body, format="json")


def api_post(ctx: dict[str, Any]) -> Any:
    return ctx["api"].post("/api/v1/job-kinds/", NEW_KIND, format="json")


def api_delete(ctx: dict[str, Any]) -> Any:
    return ctx["api"].delete("/api/v1/job-kinds/docs.index/")


def api_version_patch(ctx: dict[str, Any]) -> Any:
    set_fields(ctx, "deploy.pack", default_slo_ms=5000)  # version 2: version 1 may be sunset
    return ctx["api"].patch(
        "/api/v1/job-kinds/deploy.pack/versions/1/",
        {"sunset_at": "2031-01-01T00:00:00Z"},
        format="json",
    )


def admin_change_dry_run_off(ctx: dict[str, Any]) -> Any:
    migrate = kind("deploy.migrate")
    data = form_data(migrate)
    data.pop("require_dry_run")
    return ctx["admin"].post(CHANGE_URL.format(pk=migrate.pk), data)


def admin_add(ctx: dict[str, Any]) -> Any:
    new = JobKind(**{k: v for k, v in NEW_KIND.items() if k != "safety_policy"})
    return ctx["admin"].post(ADD_URL, form_data(new))


def admin_delete(ctx: dict[str, Any]) -> Any:
    pk = kind("docs.index").pk
    return ctx["admin"].post(f"/admin/blueprints_app/jobkind/{pk}/delete/", {"post": "yes"})


def admin_version_change(ctx: dict[str, Any]) -> Any:
    set_fields(ctx, "deploy.pack", default_slo_ms=5000)
    row = JobKindVersion.objects.get(kind="deploy.pack", version=1)
    return ctx["admin"].post(
        f"/admin/blueprints_app/jobkindversion/{row.pk}/change/",
        {"sunset_at_0": "2031-01-01", "sunset_at_1": "00:00:00", "migration": "[]"},
    )


def cli_load_registry_reset(ctx: dict[str, Any]) -> Any:
    set_fields(ctx, "deploy.pack", description="edited by hand")
    call_command("hxo_load_registry", "--reset", stdout=StringIO())


def cli_registry_import(ctx: dict[str, Any]) -> Any:
    data = bump(registry_export(), "deploy.migrate")
    entry = next(k for k in data["kinds"] if k["kind"] == "deploy.migrate")
    entry["safety_policy"] = {"allow_non_idempotent": True, "require_dry_run": False}
    entry["versions"][-1]["contract"]["require_dry_run"] = False
    entry["versions"][-1]["changed_fields"] = ["require_dry_run"]
    path: Path = ctx["tmp_path"] / "registry.json"
    path.write_text(json.dumps(data))
    call_command("hxo_registry", "import", str(path), stdout=StringIO())


# path: (write, action, object_id, field, before, after, via, from a client address)
PATHS: dict[str, tuple[Callable[[dict[str, Any]], Any], str, str, str, Any, Any, str, bool]] = {
    "API PATCH require_dry_run off": (
        api_patch_dry_run_off,
        SAFETY_LOOSENED,
        "deploy.migrate",
        "require_dry_run",
        True,
        False,
        "api",
        True,
    ),
    "API PATCH fewer approvals": (
        api_patch_fewer_approvals,
        SAFETY_LOOSENED,
        "deploy.migrate",
        "required_approvals",
        2,
        1,
        "api",
        True,
    ),
    "API PATCH non-idempotent allowed": (
        api_patch_non_idempotent_on,
        SAFETY_LOOSENED,
        "deploy.pack",
        "allow_non_idempotent",
        False,
        True,
        "api",
        True,
    ),
    "API PATCH tightened": (
        api_patch_tightened,
        KIND_UPDATED,
        "deploy.pack",
        "require_dry_run",
        False,
        True,
        "api",
        True,
    ),
    "API PUT": (api_put, KIND_UPDATED, "docs.index", "description", ..., "rewritten", "api", True),
    "API POST": (api_post, KIND_CREATED, "custom.job", "kind", ABSENT, "custom.job", "api", True),
    "API DELETE": (
        api_delete,
        KIND_DELETED,
        "docs.index",
        "kind",
        "docs.index",
        ABSENT,
        "api",
        True,
    ),
    "API versions PATCH": (
        api_version_patch,
        VERSION_UPDATED,
        "deploy.pack@1",
        "sunset_at",
        None,
        "2031-01-01T00:00:00+00:00",
        "api",
        True,
    ),
    "admin change form": (
        admin_change_dry_run_off,
        SAFETY_LOOSENED,
        "deploy.migrate",
        "require_dry_run",
        True,
        False,
        "admin",
        True,
    ),
    "admin add form": (
        admin_add,
        KIND_CREATED,
        "custom.job",
        "kind",
        ABSENT,
        "custom.job",
        "admin",
        True,
    ),
    "admin delete": (
        admin_delete,
        KIND_DELETED,
        "docs.index",
        "kind",
        "docs.index",
        ABSENT,
        "admin",
        True,
    ),
    "admin version form": (
        admin_version_change,
        VERSION_UPDATED,
        "deploy.pack@1",
        "sunset_at",
        None,
        "2031-01-01T00:00:00+00:00",
        "admin",
        True,
    ),
    "hxo_load_registry --reset": (
        cli_load_registry_reset,
        KIND_UPDATED,
        "deploy.pack",
        "description",
        "edited by hand",
        ...,
        "hxo_load_registry",
        False,
    ),
    "hxo_registry import": (
        cli_registry_import,
        SAFETY_LOOSENED,
        "deploy.migrate",
        "require_dry_run",
        True,
        False,
        "import",
        False,
    ),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_registry_write_records_one_audit_event_with_before_and_after(
    path, admiral, api_client_for, tmp_path
) -> None:
    write, action, object_id, field, before, after, via, remote = PATHS[path]
    ctx = {"api": api_client_for(admiral), "admin": admin(admiral), "tmp_path": tmp_path}
    ctx["first"] = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    response = write(ctx)
    first = ctx["first"] or 0

    if response is not None:
        assert response.status_code in (200, 201, 204, 302), response.content[:2000]
    events = list(AuditEvent.objects.filter(id__gt=first, action__startswith="registry."))
    kinds_events = [e for e in events if e.object_id == object_id]
    assert len(kinds_events) == 1, [(e.action, e.object_id) for e in events]
    event = kinds_events[0]
    assert event.action == action
    assert event.detail["via"] == via
    # `...`: any value; ABSENT: no such side (a create has no before, a delete no after).
    if before is ABSENT:
        assert event.before is None
    elif before is not ...:
        assert event.before[field] == before
    if after is ABSENT:
        assert event.after is None
    elif after is not ...:
        assert event.after[field] == after
    if action == SAFETY_LOOSENED:
        assert field in event.detail["loosened"]
    if remote:
        assert event.actor_id == admiral.pk and event.client_ip == "127.0.0.1"
    else:
        assert event.actor_id is None and via in event.actor_name
    # Only what changed is recorded (all of it for a create or a delete).
    if event.before is not None and event.after is not None:
        assert all(event.before[f] != event.after[f] for f in event.after)


def test_the_attackers_patch_is_visible_in_the_audit_api(api_client_for, admiral) -> None:
    """The reproduction: the PATCH that switched deploy.migrate's dry-run off shows up in
    GET /api/v1/audit/ as a loosened safety policy, naming who and what."""
    client = api_client_for(admiral)
    api_patch_dry_run_off({"api": client})

    body = client.get("/api/v1/audit/").json()
    rows = body["results"] if isinstance(body, dict) else body
    loosened = [r for r in rows if r["action"] == SAFETY_LOOSENED]
    assert len(loosened) == 1, rows
    assert loosened[0]["object_id"] == "deploy.migrate"
    assert loosened[0]["before"]["require_dry_run"] is True
    assert loosened[0]["after"]["require_dry_run"] is False


def test_a_write_that_changes_nothing_records_nothing(api_client_for, admiral) -> None:
    first = AuditEvent.objects.count()
    response = api_client_for(admiral).patch(
        "/api/v1/job-kinds/deploy.pack/", {"description": kind("deploy.pack").description}
    )
    assert response.status_code == 200
    assert AuditEvent.objects.count() == first


def test_an_import_records_the_versions_it_adds(tmp_path) -> None:
    data = bump(bump(registry_export(), "deploy.pack", default_slo_ms=5000), "deploy.pack")
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data))

    call_command("hxo_registry", "import", str(path), stdout=StringIO())

    events = {(e.action, e.object_id) for e in AuditEvent.objects.all()}
    # Version 3 is the kind's own save; version 2 is history the file brought along.
    assert (KIND_UPDATED, "deploy.pack") in events
    assert (VERSION_IMPORTED, "deploy.pack@2") in events
