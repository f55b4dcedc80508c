"""GET/POST/PUT/PATCH/DELETE /api/v1/job-kinds/: the contract read back, and who may write."""

from __future__ import annotations

import pytest

from blueprints_app.models import JobKind

# The contract's Appendix table and Default SLOs (HXO_BLUEPRINT_CONTRACT.md v1.9.6n), typed in
# by hand so that a wrong load cannot agree with itself.
APPENDIX = {
    # kind: (partitioners, executors, non-idempotent, dry-run, SLO ms, result status)
    "deploy.pack": (["by_filesize", "by_module"], ["pack_backend"], False, False, 120000, "packed"),
    "deploy.migrate": (["by_sql_batch"], ["sql_migrate"], True, True, 30000, "migrated"),
    "deploy.prime": (
        ["by_module", "by_dag_depth"],
        ["warm_registry", "prime_caches"],
        False,
        False,
        45000,
        "warmed",
    ),
    "assets.index": (
        ["by_asset_bucket", "by_filesize"],
        ["index_assets"],
        False,
        False,
        60000,
        "indexed",
    ),
    "assets.stage": (
        ["by_asset_bucket", "by_filesize"],
        ["index_assets"],
        False,
        False,
        60000,
        "staged",
    ),
    "docs.index": (["by_route_map"], ["docs_index"], False, False, 30000, "indexed"),
}

DESCRIPTIONS = {
    "deploy.pack": "Pack backend files for deployment (build, bundle, compress)",
    "deploy.migrate": "Execute database migrations in batches",
    "deploy.prime": "Prime registry and caches for application startup",
    "assets.index": "Index assets for search and retrieval",
    "assets.stage": "Stage assets for deployment (upload, CDN sync)",
    "docs.index": "Index documentation for search",
}

# Input and output fields with their contract types; `status` is the result status.
SCHEMAS = {
    "deploy.pack": (
        {
            "partition_id": "integer",
            "file_range_start": "integer",
            "file_range_end": "integer",
            "chunk_size_mb": "integer",
        },
        {"status": "string", "partition_id": "integer", "files_processed": "integer"},
    ),
    "deploy.migrate": (
        {"batch_id": "integer", "offset": "integer", "limit": "integer", "stage_kind": "string"},
        {"status": "string", "batch_id": "integer", "rows_affected": "integer"},
    ),
    "deploy.prime": (
        {"module": "string", "stage_kind": "string"},
        {"status": "string", "module": "string", "cache_entries": "integer"},
    ),
    "assets.index": (
        {"bucket": "string", "stage_kind": "string"},
        {"status": "string", "bucket": "string", "assets_indexed": "integer"},
    ),
    # No schema in the contract: consistent with assets.index (issue 2).
    "assets.stage": (
        {"bucket": "string", "stage_kind": "string"},
        {"status": "string", "bucket": "string"},
    ),
    "docs.index": (
        {"route": "string", "stage_kind": "string"},
        {"status": "string", "route": "string", "docs_indexed": "integer"},
    ),
}

FIELDS = {
    "kind",
    "description",
    "partitioners",
    "executors",
    "safety_policy",
    "default_slo_ms",
    "input_schema",
    "output_schema",
    "result_status",
    "version",
    "deprecated",
    "sunset_at",
    "replaced_by",
    "required_approvals",
}

NEW_KIND = {
    "kind": "custom.job",
    "description": "Custom job description",
    "partitioners": ["by_module"],
    "executors": ["warm_registry"],
    "safety_policy": {"allow_non_idempotent": False, "require_dry_run": False},
    "default_slo_ms": 10000,
    "input_schema": {"type": "object", "required": ["module"]},
    "output_schema": {"type": "object", "required": ["status"]},
    "result_status": "done",
}


@pytest.fixture
def client(api_client_for, viewer):
    return api_client_for(viewer)


def test_the_list_holds_exactly_the_six_contract_kinds(client):
    response = client.get("/api/v1/job-kinds/")

    assert response.status_code == 200
    assert response.json()["count"] == 6
    assert {k["kind"] for k in response.json()["results"]} == set(APPENDIX)


@pytest.mark.parametrize("name", list(APPENDIX))
def test_every_appendix_row_and_slo_reads_back_through_the_api(client, name):
    partitioners, executors, non_idempotent, dry_run, slo_ms, status = APPENDIX[name]

    kind = client.get(f"/api/v1/job-kinds/{name}/").json()

    assert kind["kind"] == name
    assert kind["description"] == DESCRIPTIONS[name]
    assert kind["partitioners"] == partitioners
    assert kind["executors"] == executors
    assert kind["safety_policy"] == {
        "allow_non_idempotent": non_idempotent,
        "require_dry_run": dry_run,
        # HXO's addition (docs/sql-lint.md): approvers acknowledge high-severity findings.
        "require_findings_ack": name == "deploy.migrate",
    }
    assert kind["default_slo_ms"] == slo_ms
    assert kind["result_status"] == status
    assert kind["version"] == 1
    assert kind["deprecated"] is False
    assert kind["sunset_at"] is None
    assert kind["replaced_by"] == ""


@pytest.mark.parametrize("name", list(APPENDIX))
def test_a_kind_has_exactly_the_fields_of_the_api_contract(client, name):
    kind = client.get(f"/api/v1/job-kinds/{name}/").json()

    assert set(kind) == FIELDS
    # The contract's two fields, and HXO's one addition (additive, docs/sql-lint.md).
    assert set(kind["safety_policy"]) == {
        "allow_non_idempotent",
        "require_dry_run",
        "require_findings_ack",
    }


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_listed_schema_field_is_required_and_typed(client, name):
    inputs, outputs = SCHEMAS[name]
    kind = client.get(f"/api/v1/job-kinds/{name}/").json()

    for schema, fields in ((kind["input_schema"], inputs), (kind["output_schema"], outputs)):
        assert schema["type"] == "object"
        assert set(fields) <= set(schema["required"])
        for field, json_type in fields.items():
            assert schema["properties"][field]["type"] == json_type


@pytest.mark.parametrize("name", list(APPENDIX))
def test_the_output_schema_pins_the_result_status(client, name):
    kind = client.get(f"/api/v1/job-kinds/{name}/").json()

    assert kind["output_schema"]["properties"]["status"]["const"] == kind["result_status"]


def test_assets_stage_results_are_staged(client):
    kind = client.get("/api/v1/job-kinds/assets.stage/").json()

    assert kind["result_status"] == "staged"
    assert (
        kind["input_schema"] == client.get("/api/v1/job-kinds/assets.index/").json()["input_schema"]
    )


def test_an_unknown_kind_is_404_with_a_code(client):
    response = client.get("/api/v1/job-kinds/no.such/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# --- Who may read and write --------------------------------------------------------------


def test_anonymous_requests_are_refused_with_a_code(anonymous_client):
    response = anonymous_client.get("/api/v1/job-kinds/")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.json()["errors"] == []


def test_a_bad_token_is_refused(anonymous_client, db):
    anonymous_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = anonymous_client.get("/api/v1/job-kinds/")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_anonymous_writes_are_refused(anonymous_client, db):
    response = anonymous_client.post("/api/v1/job-kinds/", NEW_KIND, format="json")

    assert response.status_code == 401
    assert not JobKind.objects.filter(kind="custom.job").exists()


def test_a_user_without_a_role_cannot_read(api_client_for, nobody):
    response = api_client_for(nobody).get("/api/v1/job-kinds/")

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


@pytest.mark.parametrize("role", ["operator", "approver", "viewer"])
def test_every_role_can_read_the_registry(api_client_for, request, role):
    client = api_client_for(request.getfixturevalue(role))

    assert client.get("/api/v1/job-kinds/").status_code == 200
    assert client.get("/api/v1/job-kinds/deploy.pack/").status_code == 200


def test_a_session_login_can_read_the_registry(viewer):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(viewer)

    assert client.get("/api/v1/job-kinds/deploy.pack/").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/job-kinds/", NEW_KIND),
        ("put", "/api/v1/job-kinds/deploy.pack/", {**NEW_KIND, "kind": "deploy.pack"}),
        ("patch", "/api/v1/job-kinds/deploy.pack/", {"default_slo_ms": 1}),
        ("delete", "/api/v1/job-kinds/deploy.pack/", None),
    ],
)
@pytest.mark.parametrize("role", ["operator", "approver", "viewer"])
def test_only_registry_admins_can_write(api_client_for, request, role, method, path, body):
    client = api_client_for(request.getfixturevalue(role))

    response = getattr(client, method)(path, body, format="json")

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert JobKind.objects.get(kind="deploy.pack").default_slo_ms == 120000
    assert not JobKind.objects.filter(kind="custom.job").exists()


def test_staff_without_the_registry_permission_cannot_write(api_client_for, operator):
    operator.is_staff = True
    operator.save()

    response = api_client_for(operator).patch(
        "/api/v1/job-kinds/deploy.pack/", {"default_slo_ms": 1}, format="json"
    )

    assert response.status_code == 403


def test_a_registry_admin_can_add_a_kind(api_client_for, admiral):
    response = api_client_for(admiral).post("/api/v1/job-kinds/", NEW_KIND, format="json")

    assert response.status_code == 201
    stored = JobKind.objects.get(kind="custom.job")
    assert stored.partitioners == ["by_module"]
    assert stored.version == 1
    assert response.json()["kind"] == "custom.job"
    assert api_client_for(admiral).get("/api/v1/job-kinds/custom.job/").status_code == 200


def test_a_registry_admin_can_change_a_kind(api_client_for, admiral):
    client = api_client_for(admiral)

    response = client.patch(
        "/api/v1/job-kinds/deploy.pack/",
        {"default_slo_ms": 90000, "safety_policy": {"require_dry_run": True}},
        format="json",
    )

    assert response.status_code == 200
    stored = JobKind.objects.get(kind="deploy.pack")
    assert stored.default_slo_ms == 90000
    assert stored.require_dry_run is True
    assert stored.allow_non_idempotent is False


def test_a_registry_admin_can_replace_a_kind(api_client_for, admiral):
    # by_dag_depth yields the `module` warm_registry reads (by_route_map would not: refused).
    body = {**NEW_KIND, "kind": "docs.index", "partitioners": ["by_dag_depth"]}

    response = api_client_for(admiral).put("/api/v1/job-kinds/docs.index/", body, format="json")

    assert response.status_code == 200
    assert JobKind.objects.get(kind="docs.index").executors == ["warm_registry"]


def test_a_registry_admin_can_delete_a_kind(api_client_for, admiral):
    response = api_client_for(admiral).delete("/api/v1/job-kinds/docs.index/")

    assert response.status_code == 204
    assert not JobKind.objects.filter(kind="docs.index").exists()


def test_the_version_is_not_writable(api_client_for, admiral):
    response = api_client_for(admiral).patch(
        "/api/v1/job-kinds/deploy.pack/", {"version": 7}, format="json"
    )

    assert response.status_code == 200
    assert JobKind.objects.get(kind="deploy.pack").version == 1


# --- Writes are validated by the one validator -------------------------------------------


def _error(response, path):
    return [e for e in response.json()["errors"] if e["path"] == path]


@pytest.mark.parametrize(
    ("change", "path", "code"),
    [
        ({"partitioners": ["by_module", "by_nothing"]}, "partitioners[1]", "unknown_partitioner"),
        ({"executors": ["no_executor"]}, "executors[0]", "unknown_executor"),
        ({"input_schema": {"type": "nonsense"}}, "input_schema", "invalid_schema"),
        ({"output_schema": ["not", "a", "schema"]}, "output_schema", "invalid_schema"),
        ({"replaced_by": "no.such"}, "replaced_by", "unknown_replacement"),
        ({"kind": "has/slash"}, "kind", "invalid_value"),
        # invalid_type since round 2: a JSON body's number is a JSON number ("7" was taken).
        ({"default_slo_ms": "soon"}, "default_slo_ms", "invalid_type"),
        ({"partitioners": []}, "partitioners", "empty"),
    ],
)
def test_an_invalid_new_kind_is_refused_and_nothing_is_stored(
    api_client_for, admiral, change, path, code
):
    body = {**NEW_KIND, **change}

    response = api_client_for(admiral).post("/api/v1/job-kinds/", body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "validation_failed"
    assert [e["code"] for e in _error(response, path)] == [code]
    assert JobKind.objects.count() == 6


def test_an_invalid_change_is_refused_and_the_kind_is_unchanged(api_client_for, admiral):
    response = api_client_for(admiral).patch(
        "/api/v1/job-kinds/deploy.pack/",
        {"default_slo_ms": 1, "executors": ["pack_backend", "ghost"]},
        format="json",
    )

    assert response.status_code == 400
    assert _error(response, "executors[1]")[0]["code"] == "unknown_executor"
    stored = JobKind.objects.get(kind="deploy.pack")
    assert stored.default_slo_ms == 120000
    assert stored.executors == ["pack_backend"]


def test_a_kind_cannot_be_renamed(api_client_for, admiral):
    response = api_client_for(admiral).patch(
        "/api/v1/job-kinds/deploy.pack/", {"kind": "deploy.packed"}, format="json"
    )

    assert response.status_code == 400
    assert _error(response, "kind")[0]["code"] == "invalid_value"
    assert JobKind.objects.filter(kind="deploy.pack").exists()


def test_a_duplicate_kind_is_refused(api_client_for, admiral):
    body = {**NEW_KIND, "kind": "deploy.pack"}

    response = api_client_for(admiral).post("/api/v1/job-kinds/", body, format="json")

    assert response.status_code == 400
    assert _error(response, "kind")[0]["code"] == "unique"
