"""Versions of job kinds: every contract change through the one registry writer (admin, API,
`hxo_load_registry`) is a new version with its history kept; the API and admin show them."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from blueprints_app import registry
from blueprints_app.contract import contract_kinds
from blueprints_app.models import VERSIONED_FIELDS, JobKind, JobKindVersion
from blueprints_app.services import job_kind_delete, job_kind_save
from blueprints_app.validation import validate_plan
from blueprints_app.versions import kinds_at
from hxo_site import codes
from hxo_site.pagination import StrictPageNumberPagination
from tests.blueprints_app.test_admin import CHANGE_URL, form_data

pytestmark = pytest.mark.django_db

STAGE = {
    "id": "pack",
    "kind": "deploy.pack",
    "partitioner": "by_module",
    "executor": "pack_backend",
}


def pack() -> JobKind:
    return JobKind.objects.get(kind="deploy.pack")


def edit(**changes: object) -> JobKind:
    row = pack()
    for field, value in changes.items():
        setattr(row, field, value)
    return job_kind_save(job_kind=row)


def versions(kind: str = "deploy.pack") -> list[tuple[int, list[str]]]:
    return list(
        JobKindVersion.objects.filter(kind=kind)
        .order_by("version")
        .values_list("version", "changed_fields")
    )


def test_the_registry_load_gives_every_contract_kind_a_version_1_history_row():
    for entry in contract_kinds():
        row = JobKindVersion.objects.get(kind=entry["kind"])
        assert row.version == 1
        assert row.contract == JobKind.objects.get(kind=entry["kind"]).snapshot()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partitioners", ["by_module"]),
        # A second executor that can serve deploy.pack (warm_registry cannot: it reads
        # `module` and returns no `files_processed`, which saving now refuses).
        ("executors", ["pack_backend", "bp_second_packer"]),
        ("allow_non_idempotent", True),
        ("require_dry_run", True),
        ("required_approvals", 2),
        ("default_slo_ms", 1),
        ("input_schema", {"type": "object"}),
        ("output_schema", {"type": "object"}),
        ("result_status", "bundled"),
    ],
)
def test_a_change_to_a_contract_field_is_a_new_version_and_keeps_the_old_one(
    field, value, monkeypatch
):
    class SecondPacker(registry.Executor):
        name = "bp_second_packer"  # declares nothing: the compatibility check trusts it

    monkeypatch.setitem(registry.EXECUTORS, SecondPacker.name, SecondPacker)
    before = pack().snapshot()

    after = edit(**{field: value})

    assert after.version == 2
    assert versions() == [(1, []), (2, [field])]
    assert JobKindVersion.objects.get(kind="deploy.pack", version=1).contract == before
    assert JobKindVersion.objects.get(kind="deploy.pack", version=2).contract == after.snapshot()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", "Pack it"),
        ("deprecated", True),
        ("sunset_at", dt.datetime(2031, 1, 1, tzinfo=dt.UTC)),
        ("replaced_by", "deploy.prime"),
    ],
)
def test_description_and_deprecation_are_not_new_versions(field, value):
    assert edit(**{field: value}).version == 1
    assert versions() == [(1, [])]


def test_saving_without_a_change_keeps_the_version():
    assert edit().version == 1
    assert edit(default_slo_ms=5).version == 2
    assert edit(default_slo_ms=5).version == 2
    assert edit(default_slo_ms=6, description="x").version == 3
    assert [v for v, _ in versions()] == [1, 2, 3]


def test_a_kind_deleted_and_added_again_continues_its_numbering():
    edit(default_slo_ms=5)
    job_kind_delete(job_kind=pack())
    entry = next(e for e in contract_kinds() if e["kind"] == "deploy.pack")

    again = job_kind_save(job_kind=JobKind(**entry))

    assert again.version == 3
    assert [v for v, _ in versions()] == [1, 2, 3]


def test_the_reset_of_hxo_load_registry_is_a_new_version_when_it_changes_the_contract():
    edit(default_slo_ms=5)

    call_command("hxo_load_registry", "--reset", stdout=StringIO())

    assert pack().version == 3
    assert pack().default_slo_ms == 120000
    assert versions()[-1] == (3, ["default_slo_ms"])


def test_an_admin_edit_of_a_contract_field_is_a_new_version(admiral):
    client = Client()
    client.force_login(admiral)

    response = client.post(CHANGE_URL.format(pk=pack().pk), form_data(pack(), default_slo_ms=9))

    assert response.status_code == 302
    assert pack().version == 2
    page = client.get(CHANGE_URL.format(pk=pack().pk)).content.decode()
    assert "v2</a> (current) changed: default_slo_ms" in page
    assert "v1</a> first version" in page


def test_the_api_lists_the_versions_of_a_kind(api_client_for, admiral, viewer):
    api_client_for(admiral).patch(
        "/api/v1/job-kinds/deploy.pack/", {"default_slo_ms": 9}, format="json"
    )

    response = api_client_for(viewer).get("/api/v1/job-kinds/deploy.pack/versions/")

    assert response.status_code == 200
    body = response.json()
    assert (body["count"], body["next"], body["previous"]) == (2, None, None)
    rows = body["results"]
    assert [(r["version"], r["current"], r["changed_fields"]) for r in rows] == [
        (1, False, []),
        (2, True, ["default_slo_ms"]),
    ]
    assert rows[1]["created_by"] == admiral.username
    assert rows[0]["contract"]["default_slo_ms"] == 120000
    assert set(rows[0]) == {
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
    one = api_client_for(viewer).get("/api/v1/job-kinds/deploy.pack/versions/1/")
    assert one.status_code == 200 and one.json()["version"] == 1
    assert (
        api_client_for(viewer).get("/api/v1/job-kinds/deploy.pack/versions/9/").status_code == 404
    )


def test_a_registry_admin_sunsets_an_older_version_and_declares_its_migration(
    api_client_for, admiral, operator
):
    edit(partitioners=["by_filesize"])
    url = "/api/v1/job-kinds/deploy.pack/versions/1/"
    body = {
        "sunset_at": "2031-01-01T00:00:00Z",
        "migration": [{"op": "rename_partitioner", "from": "by_module", "to": "by_filesize"}],
    }

    forbidden = api_client_for(operator).patch(url, body, format="json")
    response = api_client_for(admiral).patch(url, body, format="json")

    assert forbidden.status_code == 403
    assert response.status_code == 200
    row = JobKindVersion.objects.get(kind="deploy.pack", version=1)
    assert row.sunset_at == dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    assert row.migration == body["migration"]
    assert row.contract["partitioners"] == ["by_filesize", "by_module"]  # history is untouched


@pytest.mark.parametrize(
    ("body", "path", "code"),
    [
        ({"migration": [{"op": "explode"}]}, "migration[0].op", codes.INVALID_MIGRATION),
        ({"migration": {"op": "x"}}, "migration", codes.INVALID_MIGRATION),
        (
            {"migration": [{"op": "move_to_kind", "kind": "no.such"}]},
            "migration[0].kind",
            codes.INVALID_MIGRATION,
        ),
        ({"sunset_at": "2031-01-01T00:00:00Z"}, "sunset_at", codes.INVALID_VALUE),
        ({"contract": {}}, "contract", codes.UNKNOWN_FIELD),
    ],
)
def test_version_edits_are_validated(api_client_for, admiral, body, path, code):
    url = "/api/v1/job-kinds/deploy.pack/versions/1/"  # 1 is current: it cannot be sunset alone

    response = api_client_for(admiral).patch(url, body, format="json")

    assert response.status_code == 400
    assert {"path": path, "code": code} in [
        {"path": e["path"], "code": e["code"]} for e in response.json()["errors"]
    ]
    assert JobKindVersion.objects.get(kind="deploy.pack", version=1).migration == []


def test_the_version_admin_edits_sunset_and_steps_but_not_the_contract(admiral):
    edit(default_slo_ms=5)
    row = JobKindVersion.objects.get(kind="deploy.pack", version=1)
    client = Client()
    client.force_login(admiral)
    url = f"/admin/blueprints_app/jobkindversion/{row.pk}/change/"
    steps = [{"op": "set_param", "name": "root", "value": "."}]

    page = client.get(url)
    bad = client.post(url, {"sunset_at_0": "", "sunset_at_1": "", "migration": '[{"op": "nope"}]'})
    good = client.post(
        url,
        {
            "sunset_at_0": "2031-01-01",
            "sunset_at_1": "00:00:00",
            "migration": json.dumps(steps),
            "contract": "{}",
        },
    )

    assert page.status_code == 200 and "default_slo_ms" in page.content.decode()
    assert bad.status_code == 200 and "unknown op" in bad.content.decode()
    assert good.status_code == 302
    row.refresh_from_db()
    assert row.migration == steps and row.sunset_at is not None
    assert row.contract["default_slo_ms"] == 120000
    assert client.get("/admin/blueprints_app/jobkindversion/add/").status_code == 403


def test_only_registry_admins_see_the_version_admin(operator):
    operator.is_staff = True
    operator.save()
    client = Client()
    client.force_login(operator)

    assert client.get("/admin/blueprints_app/jobkindversion/").status_code == 403


# --- Pinned versions in the validator -----------------------------------------------------


def test_a_pinned_version_validates_against_its_own_contract():
    edit(partitioners=["by_filesize"])
    plan = {"name": "p", "stages": [STAGE]}

    current = validate_plan(plan)
    pinned = validate_plan(plan, pinned_versions={"deploy.pack": 1})

    assert [e.code for e in current.errors] == [codes.PARTITIONER_NOT_ALLOWED]
    assert pinned.valid
    assert [w.code for w in pinned.warnings] == [codes.KIND_VERSION_OUTDATED]


def test_a_pin_missing_from_the_history_falls_back_to_the_current_contract():
    JobKind.objects.filter(kind="deploy.pack").update(version=3)  # outside the services

    kinds = kinds_at({"deploy.pack": 2})

    assert kinds["deploy.pack"].version == 3
    assert kinds["deploy.pack"].current_version is None


def test_a_pinned_kind_never_has_a_weaker_safety_policy_than_the_current_one():
    edit(allow_non_idempotent=True, required_approvals=1)  # v2: looser
    edit(allow_non_idempotent=False, require_dry_run=True, required_approvals=3)  # v3: stricter

    pinned = kinds_at({"deploy.pack": 2})["deploy.pack"]

    assert pinned.version == 2
    assert (pinned.allow_non_idempotent, pinned.require_dry_run) == (False, True)
    assert pinned.required_approvals == 3
    assert pinned.safety_tightened is True
    for field in set(VERSIONED_FIELDS) - {
        "allow_non_idempotent",
        "require_dry_run",
        "required_approvals",
    }:
        assert (
            getattr(pinned, field)
            == JobKindVersion.objects.get(kind="deploy.pack", version=2).contract[field]
        )


def test_a_kind_sunset_refuses_every_version():
    edit(default_slo_ms=5)
    edit(deprecated=True, sunset_at=timezone.now() - dt.timedelta(days=1))

    result = validate_plan({"name": "p", "stages": [STAGE]}, pinned_versions={"deploy.pack": 1})

    assert [e.code for e in result.errors] == [codes.KIND_SUNSET]


def test_the_versions_list_pages_like_every_list(api_client_for, admiral, viewer, monkeypatch):
    # Issue 15 §7: the README and the API contract say lists paginate; this one did not.
    for slo in range(1, 4):
        api_client_for(admiral).patch(
            "/api/v1/job-kinds/deploy.pack/", {"default_slo_ms": slo}, format="json"
        )
    monkeypatch.setattr(StrictPageNumberPagination, "page_size", 3)
    client = api_client_for(viewer)

    body = client.get("/api/v1/job-kinds/deploy.pack/versions/").json()
    assert (body["count"], len(body["results"])) == (4, 3)
    seen = [r["version"] for r in body["results"]]
    body = client.get(body["next"]).json()
    seen += [r["version"] for r in body["results"]]
    assert (seen, body["next"]) == ([1, 2, 3, 4], None)
    assert client.get("/api/v1/job-kinds/deploy.pack/versions/", {"page": 9}).status_code == 404
