"""Authoring catches what the dry-run would refuse (issue 14 §5): workspace paths are resolved
against the registered workspace by the one validator, so the validate API and the editor's
live validation say `path_escape` (an error) or `path_not_found` (a warning) at the field, and
a refused dry-run links to the editor at the field."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hxo_site import codes
from runs_app import services
from runs_app.editor.links import field_anchor
from runs_app.models import Run
from runs_app.workspaces import PATH_ESCAPE, PATH_NOT_FOUND
from tests.helpers import partitioned
from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db

ESCAPES = ["../../../../etc", "/etc", "backend/../../.."]


def pack_stage(**params: Any) -> dict[str, Any]:
    return {
        "id": "pack",
        "kind": "deploy.pack",
        "partitioner": "by_filesize",
        "executor": "pack_backend",
        "params": {"workspace": "demo", **params},
    }


def prime_stage(**params: Any) -> dict[str, Any]:
    return {
        "id": "prime",
        "kind": "deploy.prime",
        "partitioner": "by_dag_depth",
        "executor": "prime_caches",
        "params": {"workspace": "demo", **params},
    }


def docs_stage(**params: Any) -> dict[str, Any]:
    return {
        "id": "docs",
        "kind": "docs.index",
        "partitioner": "by_route_map",
        "executor": "docs_index",
        "params": {"workspace": "demo", **params},
    }


@pytest.fixture
def validate(api_client_for, operator):
    client = api_client_for(operator)

    def post(stage: dict[str, Any]) -> dict[str, Any]:
        response = client.post("/api/v1/validate/", {"stage": stage}, format="json")
        assert response.status_code == 200
        return response.json()

    return post


def at(issues: list[dict[str, str]], path: str) -> list[str]:
    return [i["code"] for i in issues if i["path"] == path]


# --- The validate API -----------------------------------------------------------------------


@pytest.mark.parametrize("root", ESCAPES)
@pytest.mark.parametrize("make", [pack_stage, prime_stage, docs_stage])
def test_a_root_outside_the_workspace_is_an_error_at_the_field(validate, make, root):
    result = validate(make(root=root))

    assert result["valid"] is False
    assert at(result["errors"], "stage.params.root") == [PATH_ESCAPE]


@pytest.mark.parametrize("make", [pack_stage, prime_stage, docs_stage])
def test_a_missing_root_is_a_warning_at_the_field(validate, make):
    result = validate(make(root="no-such-docs"))

    assert result["valid"] is True
    assert at(result["warnings"], "stage.params.root") == [PATH_NOT_FOUND]
    assert "no-such-docs" in result["warnings"][0]["message"]


def test_package_roots_are_checked_entry_by_entry(validate):
    result = validate(prime_stage(package_roots=["backend", "../outside", "not-here"]))

    assert at(result["errors"], "stage.params.package_roots[1]") == [PATH_ESCAPE]
    assert at(result["warnings"], "stage.params.package_roots[2]") == [PATH_NOT_FOUND]
    assert at(result["errors"], "stage.params.package_roots[0]") == []


def test_a_symlink_out_of_the_workspace_is_an_escape(validate, settings, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "out").symlink_to("/etc")
    settings.HXO_WORKSPACES = {"demo": str(ws)}

    result = validate(pack_stage(root="out"))

    assert at(result["errors"], "stage.params.root") == [PATH_ESCAPE]


def test_existing_paths_inside_the_workspace_say_nothing(validate):
    for stage in (pack_stage(root="backend"), prime_stage(), docs_stage()):
        result = validate(stage)
        assert result["valid"] is True, result
        assert result["warnings"] == []


def test_a_plan_is_checked_the_same_way(api_client_for, operator):
    plan = {"name": "p", "stages": [pack_stage(root="../../../../etc")]}

    response = api_client_for(operator).post("/api/v1/validate/", {"plan": plan}, format="json")

    assert at(response.json()["errors"], "stages[0].params.root") == [PATH_ESCAPE]


# --- Live validation in the editor ----------------------------------------------------------


def editor_form(root: str) -> dict[str, Any]:
    sig = "deploy.pack|by_filesize|pack_backend"
    return {
        "name:string": "p",
        "description:text": "",
        "_stages": ["0"],
        "_sig": [sig],
        "_ids": "pack",
        "stages[0].id:string": "pack",
        "stages[0].kind:string": "deploy.pack",
        "stages[0].partitioner:string": "by_filesize",
        "stages[0].executor:string": "pack_backend",
        "stages[0].params.workspace:string": "demo",
        "stages[0].params.root:string": root,
    }


def root_slot(body: str) -> str:
    m = re.search(
        r'<div class="field-errors" id="err-stages-0-params-root"[^>]*>(.*?)</div>', body, re.S
    )
    assert m, "no error slot for params.root"
    return m.group(1)


def test_live_validation_shows_an_escape_as_an_error_at_the_field(client_for, operator):
    body = html(client_for(operator).post("/plans/validate/", editor_form("../../../../etc")))

    slot = root_slot(body)
    assert f'class="error" data-code="{PATH_ESCAPE}"' in slot
    assert "The plan is valid" not in body


def test_live_validation_shows_a_missing_directory_as_a_warning(client_for, operator):
    body = html(client_for(operator).post("/plans/validate/", editor_form("no-such-docs")))

    slot = root_slot(body)
    assert f'class="warning" data-code="{PATH_NOT_FOUND}"' in slot
    assert 'class="error"' not in slot
    assert "The plan is valid, with 1 warning." in body


# --- A refused dry-run links to the editor at the field ---------------------------------------


def test_field_anchor_points_at_the_editor_s_dom_ids():
    assert field_anchor("stages[2].params.root") == "f-stages-2-params-root"
    assert field_anchor("stages[0].params.statements[3]") == "f-stages-0-params-statements"
    assert field_anchor("stages[1].partitioner") == "f-stages-1-partitioner"
    assert field_anchor("stages[1].partitions[4].inputs") == "stage-1"
    assert field_anchor("name") == ""


def test_a_refused_dry_run_links_to_the_editor_at_the_field(client_for, operator):
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [pack_stage(root="no-such-docs")]}
    )

    response = client_for(operator).post(
        f"/plans/{plan.pk}/dry-run/", {"idempotency_key": "k-" + "1" * 30}
    )
    # The request only stores the run; the worker's partitioning fails it, and the run page
    # links the failure to the editor at the field.
    assert response.status_code == 302, response
    run = partitioned(Run.objects.get(plan=plan))
    assert run.state == "failed"
    body = html(client_for(operator).get(f"/runs/{run.pk}/"))
    assert run.error["code"] in body
    assert f'href="/plans/{plan.pk}/edit/#f-stages-0-params-root"' in body
    assert 'data-testid="edit-plan"' in body
    # The link lands on a field the editor draws.
    editor = html(client_for(operator).get(f"/plans/{plan.pk}/edit/"))
    assert 'id="f-stages-0-params-root"' in editor


def test_a_viewer_gets_no_edit_link(client_for, viewer, operator):
    from django.test import RequestFactory

    from hxo_site.errors import ServiceError
    from runs_app.views.plans import refused

    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [pack_stage(root="no-such-docs")]}
    )
    request = RequestFactory().post("/")
    request.user = viewer
    exc = ServiceError(
        "x",
        code=codes.PARTITIONING_FAILED,
        errors=[{"path": "stages[0].params.root", "code": PATH_NOT_FOUND, "message": "m"}],
    )

    body = refused(request, exc, back="/", title="Dry-run refused", plan=plan).content.decode()

    assert "/edit/" not in body
