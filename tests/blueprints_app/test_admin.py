"""The job-kind admin: the Appendix columns, readable schemas, and the validator on save."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from blueprints_app.models import JobKind

CHANGE_URL = "/admin/blueprints_app/jobkind/{pk}/change/"
ADD_URL = "/admin/blueprints_app/jobkind/add/"


@pytest.fixture
def admin_client_for(db):
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def client(admin_client_for, admiral):
    return admin_client_for(admiral)


def form_data(job_kind: JobKind, **changes) -> dict:
    """The change form as a browser would post it for `job_kind`, with `changes` applied."""
    kind = job_kind
    data = {
        "kind": kind.kind,
        "description": kind.description,
        "partitioners": list(kind.partitioners),
        "executors": list(kind.executors),
        "required_approvals": kind.required_approvals,
        "default_slo_ms": kind.default_slo_ms,
        "result_status": kind.result_status,
        "input_schema": json.dumps(kind.input_schema),
        "output_schema": json.dumps(kind.output_schema),
        "sunset_at_0": "",
        "sunset_at_1": "",
        "replaced_by": kind.replaced_by,
        "_save": "Save",
    }
    for flag in ("allow_non_idempotent", "require_dry_run", "deprecated"):
        if getattr(kind, flag):
            data[flag] = "on"
    data.update(changes)
    return data


def pack() -> JobKind:
    return JobKind.objects.get(kind="deploy.pack")


def test_the_list_shows_the_appendix_columns_then_slo_version_and_deprecation(client):
    response = client.get("/admin/blueprints_app/jobkind/")

    assert response.status_code == 200
    headers = [
        "Kind",
        "Partitioners",
        "Executors",
        "Non-Idempotent",
        "Dry-Run",
        "SLO (ms)",
        "Version",
        "Deprecated",
    ]
    html = response.content.decode()
    positions = [html.index(f">{header}<") for header in headers]
    assert positions == sorted(positions)
    assert "by_filesize, by_module" in html
    assert "warm_registry, prime_caches" in html


@pytest.mark.parametrize(
    ("name", "answer"), [("deploy.migrate", "Yes"), ("deploy.pack", "No"), ("docs.index", "No")]
)
def test_the_list_answers_the_safety_columns_as_the_appendix_does(client, name, answer):
    response = client.get(f"/admin/blueprints_app/jobkind/?q={name}")

    html = response.content.decode()
    assert f">{name}</a>" in html
    assert f'<td class="field-non_idempotent">{answer}</td>' in html
    assert f'<td class="field-dry_run">{answer}</td>' in html


def test_schemas_are_shown_as_indented_json(client):
    response = client.get(CHANGE_URL.format(pk=pack().pk))

    # Key order is the database's (PostgreSQL's jsonb sorts keys): check the indentation.
    html = response.content.decode()
    assert "{\n  &quot;" in html
    assert "\n  &quot;type&quot;: &quot;object&quot;" in html
    assert "\n  &quot;required&quot;: [\n    &quot;" in html


def test_partitioner_choices_come_from_the_registry(client):
    response = client.get(CHANGE_URL.format(pk=pack().pk))

    html = response.content.decode()
    for name in ("by_filesize", "by_sql_batch", "by_route_map", "docs_index", "sql_migrate"):
        assert f'value="{name}"' in html


def test_a_valid_edit_is_saved(client):
    response = client.post(
        CHANGE_URL.format(pk=pack().pk),
        form_data(pack(), default_slo_ms=90000, partitioners=["by_filesize"]),
    )

    assert response.status_code == 302
    assert pack().default_slo_ms == 90000
    assert pack().partitioners == ["by_filesize"]


def test_saving_an_unregistered_partitioner_is_refused_on_that_field(client):
    response = client.post(
        CHANGE_URL.format(pk=pack().pk),
        form_data(pack(), partitioners=["by_filesize", "by_nothing"]),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["partitioners"]
    assert "'by_nothing' is not registered" in errors["partitioners"][0]
    assert pack().partitioners == ["by_filesize", "by_module"]


def test_saving_an_unregistered_executor_is_refused_on_that_field(client):
    response = client.post(
        CHANGE_URL.format(pk=pack().pk), form_data(pack(), executors=["ghost_executor"])
    )

    errors = response.context["adminform"].form.errors
    assert list(errors) == ["executors"]
    assert "'ghost_executor' is not registered" in errors["executors"][0]
    assert pack().executors == ["pack_backend"]


def test_saving_an_invalid_json_schema_is_refused_on_that_field(client):
    response = client.post(
        CHANGE_URL.format(pk=pack().pk),
        form_data(pack(), input_schema=json.dumps({"type": "nonsense"})),
    )

    errors = response.context["adminform"].form.errors
    assert list(errors) == ["input_schema"]
    assert "not a valid JSON Schema" in errors["input_schema"][0]
    assert pack().input_schema["type"] == "object"


def test_text_that_is_not_json_is_refused_and_shown_back_as_typed(client):
    response = client.post(
        CHANGE_URL.format(pk=pack().pk), form_data(pack(), output_schema="{oops")
    )

    errors = response.context["adminform"].form.errors
    assert list(errors) == ["output_schema"]
    assert "{oops" in response.content.decode()


def test_a_new_kind_naming_an_unregistered_executor_is_not_stored(client):
    new = JobKind(
        kind="custom.job",
        description="custom",
        partitioners=["by_module"],
        executors=["custom_executor"],
        default_slo_ms=1000,
        result_status="done",
        input_schema={"type": "object"},
        output_schema={"type": "object"},
    )

    response = client.post(ADD_URL, form_data(new))

    assert response.status_code == 200
    assert "executors" in response.context["adminform"].form.errors
    assert not JobKind.objects.filter(kind="custom.job").exists()


def test_a_new_valid_kind_is_stored(client):
    new = JobKind(
        kind="custom.job",
        description="custom",
        partitioners=["by_module"],
        executors=["warm_registry"],
        default_slo_ms=1000,
        result_status="done",
        input_schema={"type": "object"},
        output_schema={"type": "object"},
    )

    response = client.post(ADD_URL, form_data(new))

    assert response.status_code == 302
    assert JobKind.objects.get(kind="custom.job").executors == ["warm_registry"]


def test_a_kind_name_cannot_be_changed_in_the_admin(client):
    client.post(CHANGE_URL.format(pk=pack().pk), form_data(pack(), kind="deploy.packed"))

    assert JobKind.objects.filter(kind="deploy.pack").exists()
    assert not JobKind.objects.filter(kind="deploy.packed").exists()


def test_a_viewer_cannot_open_the_admin(admin_client_for, viewer):
    response = admin_client_for(viewer).get("/admin/blueprints_app/jobkind/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_staff_without_registry_permissions_cannot_edit_kinds(admin_client_for, operator):
    operator.is_staff = True
    operator.save()

    response = admin_client_for(operator).post(
        CHANGE_URL.format(pk=pack().pk), form_data(pack(), default_slo_ms=1)
    )

    assert response.status_code == 403
    assert pack().default_slo_ms == 120000
