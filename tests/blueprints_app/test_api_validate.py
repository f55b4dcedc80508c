"""POST /api/v1/validate/: the contract's examples and every error code, with its field path."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from blueprints_app import registry
from blueprints_app.models import JobKind

# The contract's "Example Validation", verbatim.
CONTRACT_VALID_STAGE = {
    "id": "pack_backend",
    "kind": "deploy.pack",
    "partitioner": "by_filesize",
    "executor": "pack_backend",
}
CONTRACT_INVALID_STAGE = {
    "id": "pack_backend",
    "kind": "deploy.pack",
    "partitioner": "by_sql_batch",
    "executor": "pack_backend",
}


def stage(**fields):
    """A deploy.pack stage with params every by_filesize partitioner accepts, then `fields`."""
    return {**CONTRACT_VALID_STAGE, "params": {"workspace": "demo"}, **fields}


def plan(*stages):
    return {"name": "release", "stages": list(stages)}


@pytest.fixture
def validate(api_client_for, operator):
    """POST a body to /api/v1/validate/ as `user` (default: an operator); the JSON answer."""

    def post(body, *, user=None, status=200):
        response = api_client_for(user or operator).post("/api/v1/validate/", body, format="json")
        assert response.status_code == status, response.content
        return response.json()

    return post


def codes_at(result, path, *, key="errors"):
    return [issue["code"] for issue in result[key] if issue["path"] == path]


# --- The contract's examples -------------------------------------------------------------


def test_the_contracts_valid_example_stage_is_valid(validate):
    result = validate({"stage": CONTRACT_VALID_STAGE})

    assert result == {"valid": True, "errors": [], "warnings": []}


def test_the_contracts_valid_example_with_a_workspace_is_valid(validate):
    result = validate({"stage": stage()})

    assert result == {"valid": True, "errors": [], "warnings": []}


def test_the_contracts_invalid_example_stage_is_refused_for_its_partitioner(validate):
    result = validate({"stage": CONTRACT_INVALID_STAGE})

    assert result["valid"] is False
    assert codes_at(result, "stage.partitioner") == ["partitioner_not_allowed"]


def test_an_error_in_a_plan_names_the_stage_by_index(validate):
    second = stage(id="pack_again", partitioner="by_sql_batch")

    result = validate({"plan": plan(stage(), second)})

    assert codes_at(result, "stages[1].partitioner") == ["partitioner_not_allowed"]


def test_an_issue_has_a_path_a_code_and_a_message(validate):
    result = validate({"stage": CONTRACT_INVALID_STAGE})

    issue = result["errors"][0]
    assert set(issue) == {"path", "code", "message"}
    assert "by_sql_batch" in issue["message"]


# --- Every error code, at its field ------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "path", "code"),
    [
        ({"kind": "deploy.nothing"}, "stage.kind", "unknown_kind"),
        ({"partitioner": "by_magic"}, "stage.partitioner", "unknown_partitioner"),
        ({"executor": "magic"}, "stage.executor", "unknown_executor"),
        ({"partitioner": "by_route_map"}, "stage.partitioner", "partitioner_not_allowed"),
        ({"executor": "warm_registry"}, "stage.executor", "executor_not_allowed"),
        ({"non_idempotent": True}, "stage.non_idempotent", "non_idempotent_forbidden"),
    ],
)
def test_a_stage_breaking_a_rule_gets_its_code_at_its_path(validate, fields, path, code):
    result = validate({"stage": stage(**fields)})

    assert result["valid"] is False
    assert code in codes_at(result, path)


@pytest.fixture
def checked_partitioner(monkeypatch, db):
    """A partitioner with a known params schema and a kind that allows it."""

    class Checked(registry.Partitioner):
        name = "bp_checked"
        params_schema = {
            "type": "object",
            "properties": {"chunk_size_mb": {"type": "integer", "minimum": 1}},
            "required": ["chunk_size_mb"],
        }

    monkeypatch.setitem(registry.PARTITIONERS, Checked.name, Checked)
    JobKind.objects.create(
        kind="bp.checked",
        description="validation tests",
        partitioners=[Checked.name],
        executors=["pack_backend"],
        default_slo_ms=1000,
        result_status="packed",
    )
    return {"kind": "bp.checked", "partitioner": Checked.name, "executor": "pack_backend"}


def test_params_of_the_wrong_type_are_invalid_params_at_the_param(validate, checked_partitioner):
    result = validate({"stage": stage(**checked_partitioner, params={"chunk_size_mb": "big"})})

    assert codes_at(result, "stage.params.chunk_size_mb") == ["invalid_params"]


def test_a_missing_param_is_invalid_params_at_the_param(validate, checked_partitioner):
    result = validate({"stage": stage(**checked_partitioner, params={})})

    assert codes_at(result, "stage.params.chunk_size_mb") == ["invalid_params"]


def test_params_matching_the_schema_are_valid(validate, checked_partitioner):
    result = validate({"stage": stage(**checked_partitioner, params={"chunk_size_mb": 8})})

    assert result["valid"] is True


def migrate_stage(**fields):
    return {
        "id": "migrate",
        "kind": "deploy.migrate",
        "partitioner": "by_sql_batch",
        "executor": "sql_migrate",
        "params": {"target": "demo"},
        "non_idempotent": True,
        **fields,
    }


@pytest.mark.parametrize("role", ["operator", "approver", "viewer"])
def test_a_non_idempotent_stage_needs_force_merge(validate, request, role):
    result = validate({"stage": migrate_stage()}, user=request.getfixturevalue(role))

    assert codes_at(result, "stage.non_idempotent") == ["force_merge_required"]


def test_an_admiral_holds_force_merge(validate, admiral):
    result = validate({"stage": migrate_stage()}, user=admiral)

    assert "force_merge_required" not in codes_at(result, "stage.non_idempotent")


def test_force_merge_is_checked_per_stage_in_a_plan(validate):
    result = validate({"plan": plan(stage(), migrate_stage())})

    assert codes_at(result, "stages[1].non_idempotent") == ["force_merge_required"]


def test_two_stages_with_one_id_are_a_duplicate_stage_id(validate):
    result = validate({"plan": plan(stage(id="pack"), stage(id="pack"))})

    assert codes_at(result, "stages[1].id") == ["duplicate_stage_id"]


def test_depending_on_a_missing_stage_is_an_unknown_dependency(validate):
    result = validate({"plan": plan(stage(id="a", depends_on=["ghost"]))})

    assert codes_at(result, "stages[0].depends_on[0]") == ["unknown_dependency"]


def test_stages_depending_on_each_other_are_a_dependency_cycle(validate):
    stages = [stage(id="a", depends_on=["b"]), stage(id="b", depends_on=["a"])]

    result = validate({"plan": plan(*stages)})

    assert codes_at(result, "stages[0].depends_on") == ["dependency_cycle"]
    assert "a → b → a" in result["errors"][0]["message"]


def test_a_stage_depending_on_itself_is_a_dependency_cycle(validate):
    result = validate({"plan": plan(stage(id="a", depends_on=["a"]))})

    assert codes_at(result, "stages[0].depends_on[0]") == ["dependency_cycle"]


def test_a_chain_of_dependencies_is_valid(validate):
    stages = [stage(id="a"), stage(id="b", depends_on=["a"]), stage(id="c", depends_on=["a", "b"])]

    assert validate({"plan": plan(*stages)})["valid"] is True


def test_more_stages_than_the_limit_are_too_many_stages(validate, settings):
    settings.HXO_MAX_STAGES = 2

    result = validate({"plan": plan(stage(id="a"), stage(id="b"), stage(id="c"))})

    assert codes_at(result, "stages") == ["too_many_stages"]


def test_a_deprecated_kind_is_a_warning_not_an_error(validate):
    JobKind.objects.filter(kind="deploy.pack").update(deprecated=True)

    result = validate({"stage": stage()})

    assert result["valid"] is True
    assert codes_at(result, "stage.kind", key="warnings") == ["kind_deprecated"]


def test_a_kind_past_its_sunset_is_an_error_naming_its_replacement(validate):
    JobKind.objects.filter(kind="deploy.pack").update(
        deprecated=True,
        sunset_at=timezone.now() - dt.timedelta(days=1),
        replaced_by="deploy.prime",
    )

    result = validate({"stage": stage()})

    assert result["valid"] is False
    assert codes_at(result, "stage.kind") == ["kind_sunset"]
    assert "deploy.prime" in result["errors"][0]["message"]


def test_a_kind_with_a_future_sunset_is_only_deprecated(validate):
    JobKind.objects.filter(kind="deploy.pack").update(
        deprecated=True, sunset_at=timezone.now() + dt.timedelta(days=30)
    )

    result = validate({"stage": stage()})

    assert result["valid"] is True
    assert codes_at(result, "stage.kind", key="warnings") == ["kind_deprecated"]


# --- The request itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{}, {"stages": []}, {"stage": {}, "plan": {}}, {"stage": {}, "extra": 1}, ["stage"]],
)
def test_a_body_that_is_neither_a_stage_nor_a_plan_is_a_400_with_a_code(validate, body):
    result = validate(body, status=400)

    assert result["code"] == "validation_failed"
    assert result["errors"][0]["code"] == "required"


def test_a_stage_that_is_not_an_object_is_reported_not_refused(validate):
    result = validate({"stage": "pack everything"})

    assert codes_at(result, "stage") == ["invalid_type"]


def test_malformed_json_is_a_parse_error(api_client_for, viewer):
    response = api_client_for(viewer).post(
        "/api/v1/validate/", "{not json", content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_anonymous_validation_is_refused(anonymous_client, db):
    response = anonymous_client.post("/api/v1/validate/", {"stage": stage()}, format="json")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_a_user_without_a_role_cannot_validate(validate, nobody):
    result = validate({"stage": stage()}, user=nobody, status=403)

    assert result["code"] == "permission_denied"


def test_a_viewer_can_validate(validate, viewer):
    assert validate({"stage": stage()}, user=viewer)["valid"] is True
