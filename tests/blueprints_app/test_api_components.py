"""GET /api/v1/partitioners/ and /api/v1/executors/: the code registry as the API shows it."""

from __future__ import annotations

import pytest

from blueprints_app.validation import check_schema

CONTRACT_PARTITIONERS = {
    "by_filesize",
    "by_module",
    "by_sql_batch",
    "by_dag_depth",
    "by_asset_bucket",
    "by_route_map",
}
CONTRACT_EXECUTORS = {
    "pack_backend",
    "sql_migrate",
    "warm_registry",
    "prime_caches",
    "index_assets",
    "docs_index",
}


@pytest.fixture
def client(api_client_for, viewer):
    return api_client_for(viewer)


def test_every_contract_partitioner_is_listed_with_a_valid_params_schema(client):
    response = client.get("/api/v1/partitioners/")

    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["results"]}
    assert set(rows) >= CONTRACT_PARTITIONERS
    for name in CONTRACT_PARTITIONERS:
        assert set(rows[name]) == {
            "name",
            "description",
            "params_schema",
            "inputs_schema",
            "deprecated",
            "sunset_at",
            "replaced_by",
        }
        assert check_schema(rows[name]["params_schema"]) is None


def test_every_contract_executor_is_listed_with_its_idempotency(client):
    response = client.get("/api/v1/executors/")

    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["results"]}
    assert set(rows) >= CONTRACT_EXECUTORS
    for name in CONTRACT_EXECUTORS:
        assert set(rows[name]) == {
            "name",
            "description",
            "idempotent",
            "supports_dry_run",
            "inputs_schema",
            "output_schema",
            "deprecated",
            "sunset_at",
            "replaced_by",
        }
        assert isinstance(rows[name]["idempotent"], bool)
        assert rows[name]["supports_dry_run"] is True


def test_component_lists_are_paginated_like_every_list(client):
    body = client.get("/api/v1/executors/").json()

    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == len(body["results"])


@pytest.mark.parametrize("path", ["/api/v1/partitioners/", "/api/v1/executors/"])
def test_components_need_a_login(anonymous_client, db, path):
    response = anonymous_client.get(path)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("path", ["/api/v1/partitioners/", "/api/v1/executors/"])
def test_components_need_hxo_view(api_client_for, nobody, path):
    response = api_client_for(nobody).get(path)

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


@pytest.mark.parametrize("path", ["/api/v1/partitioners/", "/api/v1/executors/"])
def test_components_are_read_only(client, path):
    response = client.post(path, {}, format="json")

    assert response.status_code == 405
