"""A registry that refuses kinds that cannot run (issue 14 §4): each refusal through the admin
(a POST to the change form), the API and the import; the built-in declarations are true; the
registry as stored is checked at start-up and by `manage.py check`; every constraint has
words; the admin's JSON fields read JSON as the API does."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from blueprints_app import checks, compat, constraints, registry
from blueprints_app.contract import contract_kinds
from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.registry import PARTITIONERS, PartitionContext
from blueprints_app.registry_io import RegistryImportError, registry_export, registry_import
from hxo_site import codes
from tests.blueprints_app.test_admin import CHANGE_URL, form_data

URL = "/api/v1/job-kinds/{kind}/"
NONEXISTENT = {**contract_kinds()[0]["input_schema"]}


def pack() -> JobKind:
    return JobKind.objects.get(kind="deploy.pack")


@pytest.fixture
def admin(db, admiral) -> Client:
    client = Client()
    client.force_login(admiral)
    return client


@pytest.fixture
def api(api_client_for, admiral):
    return api_client_for(admiral)


def schema_requiring(extra: str) -> dict:
    schema = json.loads(json.dumps(pack().input_schema))
    schema["required"].append(extra)
    return schema


def api_errors(response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in response.json()["errors"]:
        out.setdefault(e["path"], []).append(e["code"])
    return out


def form_errors(response) -> dict[str, list[str]]:
    form = response.context["adminform"].form
    return {field: [str(m) for m in msgs] for field, msgs in form.errors.items()}


def unchanged(before: JobKind) -> bool:
    after = pack()
    return after.snapshot() == before.snapshot() and after.version == before.version


# --- The built-in components declare what they do, and the contract's kinds fit them -------


@pytest.mark.parametrize("entry", contract_kinds(), ids=lambda e: e["kind"])
def test_every_contract_kind_fits_its_built_in_components(entry):
    assert compat.kind_issues(entry) == []


def test_every_built_in_component_declares_its_schemas():
    for name, cls in registry.PARTITIONERS.items():
        if cls.__module__.startswith("runs_app.kinds"):
            assert compat.declared(cls.get_inputs_schema("any")), name
    for name, cls in registry.EXECUTORS.items():
        if cls.__module__.startswith("runs_app.kinds"):
            assert compat.declared(cls.inputs_schema), name


@pytest.mark.parametrize(
    ("partitioner", "kind", "params"),
    [
        ("by_filesize", "deploy.pack", {"root": "backend"}),
        ("by_module", "deploy.pack", {}),
        ("by_module", "deploy.prime", {}),
        ("by_dag_depth", "deploy.prime", {}),
        ("by_asset_bucket", "assets.index", {}),
        ("by_filesize", "assets.stage", {"root": "assets"}),
        ("by_route_map", "docs.index", {}),
        ("by_sql_batch", "deploy.migrate", {"statements": ["UPDATE t SET a = 1 WHERE id = 1"]}),
    ],
)
def test_a_partitioner_yields_what_it_declares(db, partitioner, kind, params):
    """The declaration is checked against real partitions of the demo workspace: every
    partition's inputs validate against `inputs_schema` (so a kind judged compatible really
    gets those fields)."""
    from blueprints_app.validation import schema_validator

    cls = PARTITIONERS[partitioner]
    ctx = PartitionContext(
        stage={"params": {"workspace": "demo", **params}}, kind=JobKind.objects.get(kind=kind)
    )
    if partitioner == "by_sql_batch":
        ctx = PartitionContext(stage={"params": {"target": "demo", **params}}, kind=ctx.kind)
    manifest = cls().partition(ctx)
    assert manifest.partitions
    validator = schema_validator(cls.get_inputs_schema(kind))
    for spec in manifest.partitions:
        assert list(validator.iter_errors(spec.inputs)) == [], spec.inputs


# --- Refusals through the API ---------------------------------------------------------------


def test_api_refuses_an_input_schema_no_partitioner_satisfies(api):
    before = pack()
    body = {"input_schema": schema_requiring("nonexistent_field")}

    response = api.patch(URL.format(kind="deploy.pack"), body, format="json")

    assert response.status_code == 400
    assert api_errors(response) == {"input_schema.required[4]": [codes.INPUT_NOT_PRODUCED]}
    assert "nonexistent_field" in response.content.decode()
    assert unchanged(before)


def test_api_refuses_a_partitioner_that_does_not_produce_the_kind_s_inputs(api):
    before = pack()
    body = {"partitioners": ["by_filesize", "by_module", "by_sql_batch"]}

    response = api.patch(URL.format(kind="deploy.pack"), body, format="json")

    assert response.status_code == 400
    errors = api_errors(response)
    assert codes.INPUT_NOT_PRODUCED in errors["partitioners[2]"]
    messages = [e["message"] for e in response.json()["errors"]]
    assert any("by_sql_batch" in m and "partition_id" in m for m in messages)
    # pack_backend cannot read what by_sql_batch yields either.
    assert codes.EXECUTOR_INPUT_MISSING in errors["executors[0]"]
    assert unchanged(before)


def test_api_refuses_an_executor_whose_output_the_kind_refuses(api):
    before = pack()

    response = api.patch(
        URL.format(kind="deploy.pack"),
        {"executors": ["pack_backend", "warm_registry"]},
        format="json",
    )

    assert response.status_code == 400
    errors = api_errors(response)
    assert codes.OUTPUT_NOT_PRODUCED in errors["executors[1]"]
    assert codes.OUTPUT_TYPE_MISMATCH in errors["executors[1]"]  # status 'warmed' ≠ 'packed'
    assert unchanged(before)


def test_api_refuses_an_executor_that_cannot_serve_the_kind(api):
    response = api.patch(
        URL.format(kind="docs.index"), {"executors": ["docs_index", "index_assets"]}, format="json"
    )

    assert response.status_code == 400
    assert codes.EXECUTOR_UNSUPPORTED_KIND in api_errors(response)["executors[1]"]


def test_api_refuses_zero_approvals_on_the_field(api):
    response = api.patch(URL.format(kind="deploy.pack"), {"required_approvals": 0}, format="json")

    assert response.status_code == 400
    assert list(api_errors(response)) == ["required_approvals"]
    assert pack().required_approvals == 1


def test_api_accepts_an_empty_schema(api):
    response = api.patch(URL.format(kind="deploy.pack"), {"output_schema": {}}, format="json")

    assert response.status_code == 200
    assert pack().output_schema == {}


@pytest.mark.parametrize(
    ("text", "code", "path"),
    [
        (
            '{"input_schema": {"type": "object", "type": "array"}}',
            codes.DUPLICATE_KEY,
            "input_schema",
        ),
        ('{"input_schema": {"maximum": 1e400}}', codes.PARSE_ERROR, ""),
        ('{"input_schema": {"maximum": NaN}}', codes.PARSE_ERROR, ""),
        ('{"input_schema": {"maximum": -Infinity}}', codes.PARSE_ERROR, ""),
    ],
)
def test_api_refuses_duplicate_keys_and_non_finite_numbers(api, text, code, path):
    before = pack()

    response = api.generic(
        "PATCH", URL.format(kind="deploy.pack"), text, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["errors"][0]["path"] == path
    assert unchanged(before)


def store_pack_with_sql_batch() -> dict[str, Any]:
    """Store deploy.pack allowing by_sql_batch past the service (as a kind stored before
    these checks could), and return a stage (no id) naming that pair."""
    JobKind.objects.filter(kind="deploy.pack").update(
        partitioners=["by_filesize", "by_module", "by_sql_batch"]
    )
    return {
        "kind": "deploy.pack",
        "partitioner": "by_sql_batch",
        "executor": "pack_backend",
        "params": {"target": "demo", "statements": ["UPDATE t SET a = 1 WHERE id = 1"]},
    }


def test_a_stage_of_a_stored_kind_that_cannot_run_is_invalid_at_validate(api_client_for, operator):
    """A kind stored before these checks (written past the service) still cannot pass a
    stage that would fail at its dry-run."""
    stage = {"id": "s", **store_pack_with_sql_batch()}

    result = api_client_for(operator).post("/api/v1/validate/", {"stage": stage}, format="json")

    body = result.json()
    assert body["valid"] is False
    assert codes.INPUT_NOT_PRODUCED in [
        e["code"] for e in body["errors"] if e["path"] == "stage.partitioner"
    ]


def test_every_stage_of_a_plan_with_that_pair_gets_the_refusal_at_its_own_path(
    api_client_for, operator
):
    """validate_plan remembers the registry's answer per (kind, partitioner, executor) for
    one pass: the second and third stages of the same pair get it too, under their paths."""
    stage = store_pack_with_sql_batch()
    plan = {"name": "p", "stages": [{**stage, "id": f"s{i}"} for i in range(3)]}

    body = api_client_for(operator).post("/api/v1/validate/", {"plan": plan}, format="json").json()

    refused = [
        (e["path"], e["message"]) for e in body["errors"] if e["code"] == codes.INPUT_NOT_PRODUCED
    ]
    per_stage = [sorted(m for p, m in refused if p == f"stages[{i}].partitioner") for i in range(3)]
    assert per_stage[0] and per_stage[0] == per_stage[1] == per_stage[2]
    assert len(refused) == 3 * len(per_stage[0])


# --- Refusals through the admin --------------------------------------------------------------


def test_admin_refuses_an_input_schema_no_partitioner_satisfies(admin):
    before = pack()

    response = admin.post(
        CHANGE_URL.format(pk=before.pk),
        form_data(before, input_schema=json.dumps(schema_requiring("nonexistent_field"))),
    )

    assert response.status_code == 200
    errors = form_errors(response)
    assert list(errors) == ["input_schema"]
    assert "nonexistent_field" in errors["input_schema"][0]
    assert unchanged(before)


def test_admin_refuses_ticking_by_sql_batch_for_deploy_pack(admin):
    before = pack()

    response = admin.post(
        CHANGE_URL.format(pk=before.pk),
        form_data(before, partitioners=["by_filesize", "by_module", "by_sql_batch"]),
    )

    assert response.status_code == 200
    errors = form_errors(response)
    assert "partitioners" in errors
    assert any("by_sql_batch" in m and "partition_id" in m for m in errors["partitioners"])
    assert unchanged(before)


def test_admin_refuses_an_executor_whose_output_the_kind_refuses(admin):
    before = pack()

    response = admin.post(
        CHANGE_URL.format(pk=before.pk),
        form_data(before, executors=["pack_backend", "warm_registry"]),
    )

    errors = form_errors(response)
    assert "executors" in errors
    assert any("warm_registry" in m and "files_processed" in m for m in errors["executors"]), errors
    assert unchanged(before)


def test_admin_refuses_an_executor_that_cannot_serve_the_kind(admin):
    # The admin's twin of test_api_refuses_an_executor_that_cannot_serve_the_kind.
    before = JobKind.objects.get(kind="docs.index")

    response = admin.post(
        CHANGE_URL.format(pk=before.pk),
        form_data(before, executors=["docs_index", "index_assets"]),
    )

    assert response.status_code == 200
    errors = form_errors(response)
    assert any(
        "index_assets" in m and "cannot serve job kind 'docs.index'" in m
        for m in errors["executors"]
    ), errors
    after = JobKind.objects.get(kind="docs.index")
    assert after.snapshot() == before.snapshot() and after.version == before.version


@pytest.mark.parametrize(
    ("field", "words"),
    [("required_approvals", "at least 1 approval"), ("default_slo_ms", "at least 1 millisecond")],
)
def test_admin_shows_a_constraint_as_a_field_error_in_words(admin, field, words):
    before = pack()

    response = admin.post(CHANGE_URL.format(pk=before.pk), form_data(before, **{field: 0}))

    assert response.status_code == 200
    errors = form_errors(response)
    assert list(errors) == [field]
    assert words in errors[field][0]
    assert "Constraint" not in response.content.decode()
    assert unchanged(before)


def test_admin_accepts_an_empty_schema_like_the_api(admin):
    before = pack()

    response = admin.post(CHANGE_URL.format(pk=before.pk), form_data(before, output_schema="{}"))

    assert response.status_code == 302, form_errors(response)
    assert pack().output_schema == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"type": "object", "type": "array"}', "more than once"),
        ('{"type": "object", "maximum": 1e400}', "too large"),
        ('{"type": "object", "maximum": NaN}', "NaN is not valid JSON"),
        ('{"type": "object", "maximum": Infinity}', "Infinity is not valid JSON"),
    ],
)
def test_admin_refuses_duplicate_keys_and_non_finite_numbers_on_the_field(admin, text, words):
    before = pack()
    versions = JobKindVersion.objects.count()

    response = admin.post(CHANGE_URL.format(pk=before.pk), form_data(before, input_schema=text))

    assert response.status_code == 200  # a field error, not a 500 from JSON_VALID
    errors = form_errors(response)
    assert list(errors) == ["input_schema"]
    assert words in errors["input_schema"][0]
    assert unchanged(before)
    assert JobKindVersion.objects.count() == versions  # no new version either


# --- Refusals through the import ------------------------------------------------------------


def test_import_refuses_a_kind_that_cannot_run_and_writes_nothing(db, admiral):
    export = registry_export()
    entry = next(k for k in export["kinds"] if k["kind"] == "deploy.pack")
    entry["partitioners"] = ["by_filesize", "by_module", "by_sql_batch"]
    before = pack()

    with pytest.raises(RegistryImportError) as caught:
        registry_import(data=export, user=admiral)

    assert any(
        e["code"] == codes.INPUT_NOT_PRODUCED and e["path"].endswith("partitioners[2]")
        for e in caught.value.errors
    ), caught.value.errors
    assert unchanged(before)


def test_the_import_command_refuses_duplicate_keys(db, admiral, tmp_path: Path):
    from django.core.management.base import CommandError

    path = tmp_path / "registry.json"
    path.write_text('{"format": "hxo-registry", "format": "other", "kinds": []}')

    with pytest.raises(CommandError, match="more than once"):
        call_command("hxo_registry", "import", str(path))


# --- The registry as stored: start-up and manage.py check -----------------------------------


def break_pack() -> None:
    # Past the service, as a row written before these checks existed would be.
    JobKind.objects.filter(kind="deploy.pack").update(
        partitioners=["by_filesize", "by_module", "by_sql_batch"]
    )


def test_manage_py_check_warns_about_a_stored_kind_that_cannot_run(db):
    break_pack()
    out = io.StringIO()

    call_command("check", stdout=out, stderr=out)

    text = out.getvalue()
    assert checks.CHECK_ID in text
    assert "deploy.pack: partitioners[2]" in text and "partition_id" in text


def test_manage_py_check_is_quiet_for_the_contract_registry(db):
    assert checks.registry_check() == []


def test_start_up_logs_a_warning_per_problem(db, caplog):
    break_pack()

    with caplog.at_level(logging.WARNING, logger="hxo.registry"):
        found = checks.log_registry_problems()

    assert found and all("deploy.pack" in line for line in found)
    assert any("by_sql_batch" in r.getMessage() for r in caplog.records)


# --- Every constraint has words -------------------------------------------------------------


def test_every_constraint_of_the_registry_models_has_a_message():
    for model in (JobKind, JobKindVersion):
        for constraint in model._meta.constraints:
            entry = constraints.message_for(model, constraint)
            assert entry.field in {f.name for f in model._meta.fields}
            assert "Constraint" not in entry.message


def test_a_version_constraint_is_a_field_error_in_words(db):
    from django.core.exceptions import ValidationError

    row = JobKindVersion.objects.get(kind="deploy.pack", version=1)
    copy = JobKindVersion(kind=row.kind, version=row.version, contract=row.contract)

    with pytest.raises(ValidationError) as caught:
        copy.validate_constraints()

    assert list(caught.value.message_dict) == ["version"]
    assert "never reused" in caught.value.message_dict["version"][0]


def test_the_components_api_shows_the_declarations(api_client_for, viewer):
    client = api_client_for(viewer)

    parts = {
        r["name"]: r for r in client.get("/api/v1/partitioners/?page_size=100").json()["results"]
    }
    execs = {r["name"]: r for r in client.get("/api/v1/executors/?page_size=100").json()["results"]}

    assert "partition_id" in parts["by_filesize"]["inputs_schema"]["required"]
    assert execs["pack_backend"]["output_schema"]["properties"]["status"]["const"] == "packed"


# --- The structural rules, one by one -----------------------------------------------------


class Yields(registry.Partitioner):
    name = "t_yields"
    inputs_schema = registry.fields_schema({"n": "integer", "s": "string"})


class Reads(registry.Executor):
    name = "t_reads"
    inputs_schema = registry.fields_schema({"n": "number"})
    output_schema = registry.fields_schema(
        {"status": {"type": "string", "enum": ["ok", "done"]}, "count": "integer"}
    )


class Silent(registry.Partitioner):
    name = "t_silent"  # declares nothing: trusted


@pytest.fixture
def fakes(monkeypatch):
    for cls in (Yields, Silent):
        monkeypatch.setitem(registry.PARTITIONERS, cls.name, cls)
    monkeypatch.setitem(registry.EXECUTORS, Reads.name, Reads)


def kind(**over):
    return {
        "kind": "t.kind",
        "partitioners": ["t_yields"],
        "executors": ["t_reads"],
        "input_schema": {
            "type": "object",
            "required": ["n"],
            "properties": {"n": {"type": "number"}},
        },
        "output_schema": {"required": ["count"], "properties": {"count": {"type": "number"}}},
        **over,
    }


def found(data):
    return [(path, code) for path, code, _m in compat.kind_issues(data)]


def test_an_integer_fits_a_number_and_extra_fields_are_fine(fakes):
    assert found(kind()) == []


def test_a_type_the_schema_does_not_take_is_a_mismatch(fakes):
    schema = {"required": ["s"], "properties": {"s": {"type": "integer"}}}

    assert found(kind(input_schema=schema)) == [
        ("input_schema.required[0]", codes.INPUT_TYPE_MISMATCH)
    ]


def test_additional_properties_false_refuses_fields_the_partitioner_adds(fakes):
    schema = {"required": ["n"], "properties": {"n": {}}, "additionalProperties": False}

    assert found(kind(input_schema=schema)) == [("partitioners[0]", codes.INPUT_NOT_ALLOWED)]


def test_an_output_value_the_schema_does_not_allow_is_refused(fakes):
    schema = {"required": ["status"], "properties": {"status": {"const": "ok"}}}

    assert found(kind(output_schema=schema)) == [
        ("output_schema.required[0]", codes.OUTPUT_TYPE_MISMATCH)
    ]


def test_an_undeclared_partitioner_is_trusted(fakes):
    schema = {"required": ["anything"]}

    assert found(kind(partitioners=["t_silent"], input_schema=schema)) == []
