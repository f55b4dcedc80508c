"""The plan editor: a form generated from the registry and the partitioners' params schemas,
live validation through the one validator (errors at their field, only error areas swapped),
structural edits without JavaScript, saving as revisions, JSON import and export, history."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hxo_site import codes
from runs_app.models import Plan, PlanRevision
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL
from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db


def form(stages: list[dict[str, Any]], name: str = "p", **extra: Any) -> dict[str, Any]:
    """A posted editor form, as the browser sends it (paths with a type suffix)."""
    data: dict[str, Any] = {"name:string": name, "description:text": "", "_stages": [], "_sig": []}
    for i, s in enumerate(stages):
        data["_stages"].append(str(i))
        data["_sig"].append(s.pop("_sig", sig(s)))
        for key, value in s.items():
            data[f"stages[{i}].{key}"] = value
    data.update(extra)
    return data


def echo_stage(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    stage = {
        "id:string": "a",
        "kind": TEST_KIND,
        "partitioner": "test_items",
        "executor": "test_append",
        "params.items:integer": "3",
        "params.dir:string": str(tmp_path),
    }
    stage.update(overrides)
    # the kind/partitioner/executor selects post as strings
    for key in ("kind", "partitioner", "executor"):
        if key in stage:
            stage[f"{key}:string"] = stage.pop(key)
    return stage


def sig(stage: dict[str, Any]) -> str:
    return "|".join(stage.get(f"{k}:string", "") for k in ("kind", "partitioner", "executor"))


def slot(body: str, path_slug: str) -> str:
    m = re.search(
        rf'<div class="field-errors" id="err-{re.escape(path_slug)}"[^>]*>(.*?)</div>', body, re.S
    )
    assert m, f"no error slot for {path_slug}"
    return m.group(1)


@pytest.fixture
def op(client_for, operator, test_kinds):
    return client_for(operator)


def test_a_new_plan_starts_with_one_stage_and_every_registered_kind(op) -> None:
    body = html(op.get("/plans/new/"))
    assert 'name="stages[0].kind:string"' in body
    for kind in ("deploy.pack", "deploy.migrate", "docs.index", TEST_KIND):
        assert f'<option value="{kind}"' in body
    assert "— choose a kind first —" in body


def test_a_kind_limits_the_partitioner_and_executor_choices(op, tmp_path) -> None:
    stage = echo_stage(tmp_path)
    body = html(op.post("/plans/new/", form([stage], _action="refresh")))
    partitioners = re.search(
        r'name="stages\[0\]\.partitioner:string".*?</select>', body, re.S
    ).group(0)
    assert '<option value="test_items"' in partitioners
    assert "by_filesize" not in partitioners and "by_sql_batch" not in partitioners
    executors = re.search(r'name="stages\[0\]\.executor:string".*?</select>', body, re.S).group(0)
    assert "test_append" in executors and "pack_backend" not in executors


def test_choosing_a_kind_fills_in_its_first_allowed_components(op) -> None:
    stage = {"id:string": "pack", "kind:string": "deploy.pack", "_sig": "||"}
    body = html(op.post("/plans/validate/", form([stage])))
    # The stage changed kind: it comes back whole (its choices and params changed).
    assert 'id="stage-0" hx-swap-oob="true"' in body
    assert '<option value="by_filesize" selected>' in body
    assert '<option value="pack_backend" selected>' in body
    # ... with the params form of by_filesize: a workspace picker from settings.
    assert 'name="stages[0].params.workspace:string"' in body
    assert '<option value="demo"' in body
    assert 'name="stages[0].params.chunk_size_mb:integer"' in body and 'type="number"' in body


def test_a_partitioner_the_kind_does_not_allow_stays_chosen_with_the_error_at_its_field(
    op, tmp_path
) -> None:
    stage = echo_stage(tmp_path, partitioner="by_filesize")
    stage["_sig"] = "deploy.pack|by_filesize|test_append"
    body = html(op.post("/plans/validate/", form([stage])))
    assert (
        '<option value="by_filesize" selected>by_filesize — not allowed for test.echo</option>'
        in body
    )
    errors = slot(body, "stages-0-partitioner")
    assert f'data-code="{codes.PARTITIONER_NOT_ALLOWED}"' in errors
    assert "allowed: test_items" in errors
    assert "to fix before saving" in body


def test_live_validation_swaps_only_error_areas_never_an_input(op, tmp_path) -> None:
    stage = echo_stage(tmp_path, **{"params.items:integer": "-4"})
    stage["_sig"] = sig(stage)
    data = form([stage], _ids="a")
    body = html(op.post("/plans/validate/", data))
    # Nothing the user types comes back: no text input, select or textarea.
    assert "<textarea" not in body and "<select" not in body
    assert not re.search(r'<input (?![^>]*type="hidden")', body)
    assert 'hx-swap-oob="true"' in body
    # The error sits in the slot of the field its path names.
    assert "minimum of 0" in slot(body, "stages-0-params-items")
    assert slot(body, "stages-0-params-dir").strip() == ""


def test_plan_level_errors_are_shown_on_top(op) -> None:
    body = html(op.post("/plans/validate/", form([], name="")))
    top = body[
        body.index('id="plan-errors"') : body.index("</div>", body.index('id="plan-errors"') + 300)
    ]
    assert "a plan needs at least one stage" in body
    assert 'data-testid="plan-level-errors"' in top


def test_unknown_dependencies_and_duplicate_ids_land_at_their_fields(op, tmp_path) -> None:
    a = echo_stage(tmp_path)
    b = echo_stage(tmp_path, **{"id:string": "b", "depends_on:list": ["a", "ghost"]})
    c = echo_stage(tmp_path)
    body = html(op.post("/plans/validate/", form([a, b, c], _ids="a,b,a")))
    assert "already used by stages[0]" in slot(body, "stages-2-id")
    assert "&#x27;ghost&#x27; is not a stage" in slot(body, "stages-1-depends_on")


def test_the_depends_on_choices_follow_renamed_stages(op, tmp_path) -> None:
    a, b = echo_stage(tmp_path), echo_stage(tmp_path, **{"id:string": "b"})
    a["_sig"], b["_sig"] = sig(a), sig(b)
    body = html(op.post("/plans/validate/", form([a, b], _ids="old,b")))
    assert 'id="f-stages-1-depends_on" hx-swap-oob="true"' in body
    assert 'value="a"' in body
    body = html(op.post("/plans/validate/", form([a, b], _ids="a,b")))
    assert 'id="f-stages-1-depends_on" hx-swap-oob="true"' not in body


def test_non_idempotent_is_offered_only_where_the_kind_allows_it_with_its_consequence(
    op, client_for, admiral, tmp_path
) -> None:
    body = html(op.post("/plans/new/", form([echo_stage(tmp_path)], _action="refresh")))
    assert 'name="stages[0].non_idempotent:flag"' in body
    assert "needs the hxo:force-merge capability" in body
    pack = {
        "id:string": "p",
        "kind:string": "deploy.pack",
        "partitioner:string": "by_filesize",
        "executor:string": "pack_backend",
    }
    body = html(op.post("/plans/new/", form([pack], _action="refresh")))
    assert "non_idempotent" not in body
    assert "does not allow non-idempotent stages" in body


def test_a_non_idempotent_stage_without_force_merge_is_flagged_but_can_be_saved(
    op, tmp_path
) -> None:
    stage = echo_stage(tmp_path, **{"non_idempotent:flag": "true"})
    stage["_sig"] = sig(stage)
    body = html(op.post("/plans/validate/", form([stage], _ids="a")))
    assert f'data-code="{codes.FORCE_MERGE_REQUIRED}"' in slot(body, "stages-0-non_idempotent")
    assert "The plan can be saved, but running it needs" in body
    response = op.post("/plans/new/", form([stage], name="risky", _action="save"))
    assert response.status_code == 302
    assert Plan.objects.get(name="risky").latest_revision.stages[0]["non_idempotent"] is True


def test_structural_edits_work_without_javascript_and_save_nothing(op, tmp_path) -> None:
    a, b = (
        echo_stage(tmp_path),
        echo_stage(tmp_path, **{"id:string": "b", "depends_on:list": ["a"]}),
    )
    body = html(op.post("/plans/new/", form([a, b], _action="add")))
    assert 'value="stage-3"' in body and 'id="stage-2"' in body
    body = html(op.post("/plans/new/", form([a, b], _action="down:0")))
    assert body.index('value="b"') < body.index('value="a"')
    body = html(op.post("/plans/new/", form([a, b], _action="remove:0")))
    assert 'id="stage-1"' not in body
    assert 'value="a" checked' not in body  # b no longer depends on the removed stage
    assert Plan.objects.count() == 0


def test_with_htmx_a_structural_edit_returns_only_the_stages(op, tmp_path) -> None:
    response = op.post(
        "/plans/new/", form([echo_stage(tmp_path)], _action="add"), HTTP_HX_REQUEST="true"
    )
    body = html(response)
    assert body.lstrip().startswith('<div id="stages"')
    assert "<html" not in body
    assert 'id="plan-errors" class="summary" aria-live="polite" hx-swap-oob="true"' in body
    assert "autofocus" in body  # the new stage's id field takes the focus


def test_saving_creates_the_plan_and_its_first_revision(op, tmp_path) -> None:
    response = op.post("/plans/new/", form([echo_stage(tmp_path)], name="nightly", _action="save"))
    plan = Plan.objects.get(name="nightly")
    assert response.status_code == 302 and response["Location"] == f"/plans/{plan.pk}/"
    assert plan.latest_revision.document["stages"] == [
        {
            "id": "a",
            "kind": TEST_KIND,
            "partitioner": "test_items",
            "executor": "test_append",
            "params": {"items": 3, "dir": str(tmp_path)},
            "depends_on": [],
        }
    ]


def test_an_invalid_plan_is_not_saved_and_comes_back_with_its_errors(op, tmp_path) -> None:
    stage = echo_stage(tmp_path, partitioner="by_sql_batch")
    response = op.post("/plans/new/", form([stage], name="bad", _action="save"))
    assert response.status_code == 400
    assert "not allowed for test.echo" in slot(html(response), "stages-0-partitioner")
    assert str(tmp_path) in html(response)  # what was typed is kept
    assert not Plan.objects.exists()


def test_editing_makes_a_new_revision_with_its_comment(op, plan, tmp_path) -> None:
    body = html(op.get(f"/plans/{plan.pk}/edit/"))
    assert 'name="stages[1].depends_on:list" value="a" checked' in body
    stage = echo_stage(tmp_path, **{"params.items:integer": "9"})
    response = op.post(
        f"/plans/{plan.pk}/edit/",
        form([stage], name="nightly", _comment="nine items", _action="save"),
    )
    assert response.status_code == 302
    revision = PlanRevision.objects.get(plan=plan, number=2)
    assert revision.comment == "nine items" and revision.author.username == "otto"
    again = op.post(
        f"/plans/{plan.pk}/edit/",
        form(
            [echo_stage(tmp_path, **{"params.items:integer": "9"})], name="nightly", _action="save"
        ),
        follow=True,
    )
    assert "Nothing changed" in html(again)


def test_params_that_fail_to_parse_say_so_at_their_field(op, tmp_path) -> None:
    stage = echo_stage(tmp_path, **{"params.items:integer": "many"})
    stage["_sig"] = sig(stage)
    body = html(op.post("/plans/validate/", form([stage], _ids="a")))
    assert "&#x27;many&#x27; is not a whole number" in slot(body, "stages-0-params-items")


def test_nested_params_become_nested_objects(op) -> None:
    stage = {
        "id:string": "m",
        "kind:string": "deploy.migrate",
        "partitioner:string": "by_sql_batch",
        "executor:string": "sql_migrate",
        "params.target:string": "demo",
        "params.backfill.sql:raw": "UPDATE t SET x = 1 WHERE id >= :start AND id < :end",
        "params.backfill.table:string": "t",
        "params.backfill.key_column:string": "id",
        "params.statements:blocks": "",
    }
    response = op.post("/plans/new/", form([stage], name="migrate", _action="save"))
    assert response.status_code == 302, html(response)
    params = Plan.objects.get(name="migrate").latest_revision.stages[0]["params"]
    assert params == {
        "target": "demo",
        "backfill": {
            "sql": "UPDATE t SET x = 1 WHERE id >= :start AND id < :end",
            "table": "t",
            "key_column": "id",
        },
    }


def test_the_json_view_exports_and_imports(op, plan) -> None:
    response = op.get(f"/plans/{plan.pk}/json/?download=1")
    assert response["Content-Disposition"] == 'attachment; filename="nightly-r1.json"'
    document = json.loads(response.content)
    assert [s["id"] for s in document["stages"]] == ["a", "b"]
    document["description"] = "imported"
    response = op.post(
        f"/plans/{plan.pk}/json/",
        {"document": json.dumps(document), "_action": "save", "comment": "via json"},
    )
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.latest_number == 2 and plan.description == "imported"


def test_importing_broken_json_shows_where_and_saves_nothing(op, plan) -> None:
    response = op.post("/plans/new/json/", {"document": '{"name": "x",', "_action": "save"})
    assert response.status_code == 400
    assert "not valid JSON" in html(response)
    document = {
        "name": "x",
        "stages": [
            {"id": "a", "kind": TEST_KIND, "partitioner": "by_module", "executor": "test_append"}
        ],
    }
    body = html(op.post("/plans/validate-json/", {"document": json.dumps(document)}))
    assert "stages[0].partitioner" in body and "not allowed" in body
    assert "<textarea" not in body  # the text the user is typing is never sent back
    assert Plan.objects.count() == 1


def test_a_json_file_can_be_opened_in_the_editor_unsaved(op, tmp_path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    document = {
        "name": "from file",
        "stages": [
            {
                "id": "q",
                "kind": TEST_KIND_NOAPPROVAL,
                "partitioner": "test_items",
                "executor": "test_append",
                "params": {"items": 2, "dir": str(tmp_path)},
            }
        ],
    }
    upload = SimpleUploadedFile("plan.json", json.dumps(document).encode(), "application/json")
    body = html(op.post("/plans/new/json/", {"file": upload, "_action": "edit"}))
    assert 'name="stages[0].params.items:integer" value="2"' in body
    assert 'value="from file"' in body
    assert not Plan.objects.exists()


def test_the_editor_can_show_its_unsaved_document_as_json(op, tmp_path) -> None:
    body = html(
        op.post("/plans/new/json/", form([echo_stage(tmp_path)], name="draft", _action="json"))
    )
    assert "&quot;name&quot;: &quot;draft&quot;" in body
    assert "&quot;items&quot;: 3" in body


def test_the_history_shows_a_readable_diff_between_revisions(op, plan, tmp_path) -> None:
    op.post(
        f"/plans/{plan.pk}/edit/",
        form(
            [echo_stage(tmp_path, **{"params.items:integer": "7", "slo_ms:integer": "5000"})],
            name="nightly",
            _action="save",
        ),
    )
    body = html(op.get(f"/plans/{plan.pk}/diff/?from=1&to=2"))
    assert "Stage <code>b</code> was removed" in body
    assert "<code>params.items</code>" in body and "<code>slo_ms</code>" in body
    assert 'class="u-add">+' in body and 'class="u-del">-' in body
    assert "Revision 1 → 2" in body
    assert op.get(f"/plans/{plan.pk}/diff/?from=1&to=9").status_code == 404


def test_a_stage_redrawn_by_live_validation_keeps_the_plan_s_edit_url(op, plan, tmp_path) -> None:
    stage = echo_stage(tmp_path)
    stage["_sig"] = "||"
    body = html(op.post("/plans/validate/", form([stage], _plan=str(plan.pk))))
    assert f'hx-post="/plans/{plan.pk}/edit/"' in body
    assert 'hx-post="/plans/new/"' not in body
