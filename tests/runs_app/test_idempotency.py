"""An `Idempotency-Key` names one request: the same key with the same method, path and body
returns the same run; with anything else it is refused (422 `idempotency_key_reused`) and
nothing is started. Every endpoint that honours the key is covered, API and browser forms."""

from __future__ import annotations

from typing import Any

import pytest

from runs_app import services
from runs_app.models import Plan, Run
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db


def _plan(actor: Any, tmp_path, name: str = "p") -> Plan:
    return services.plan_create(
        actor=actor,
        document={"name": name, "stages": [stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL)]},
    )


# (endpoint, first body, a body that means the same request, a body that does not)
ENDPOINTS = [
    ("dry-run", {}, None, None),
    ("apply", {}, {"force_rerun": False}, {"force_rerun": True}),
    ("apply", {"force_rerun": True}, {"force_rerun": True}, {}),
]


@pytest.mark.parametrize(("endpoint", "body", "same", "other"), ENDPOINTS)
def test_the_same_key_and_request_return_the_same_run(
    test_kinds, tmp_path, operator, api_client_for, endpoint, body, same, other
) -> None:
    plan = _plan(operator, tmp_path)
    client = api_client_for(operator)
    url = f"/api/v1/plans/{plan.pk}/{endpoint}/"
    first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client.post(
        url, body if same is None else same, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert first.status_code == again.status_code == 202, again.json()
    assert first.json()["id"] == again.json()["id"]
    assert Run.objects.count() == 1


@pytest.mark.parametrize(("endpoint", "body", "same", "other"), [e for e in ENDPOINTS if e[3]])
def test_the_same_key_with_another_body_is_refused_and_starts_nothing(
    test_kinds, tmp_path, operator, api_client_for, endpoint, body, same, other
) -> None:
    plan = _plan(operator, tmp_path)
    client = api_client_for(operator)
    url = f"/api/v1/plans/{plan.pk}/{endpoint}/"
    first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 202
    refused = client.post(url, other, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert refused.status_code == 422
    assert refused.json()["code"] == "idempotency_key_reused"
    assert refused.json()["errors"][0]["path"] == "Idempotency-Key"
    assert refused.json()["run"] == first.json()["id"]
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    ("first_endpoint", "second_endpoint", "other_plan"),
    [
        ("dry-run", "apply", False),
        ("apply", "dry-run", False),
        ("dry-run", "dry-run", True),
        ("apply", "apply", True),
    ],
)
def test_the_same_key_on_another_path_is_refused(
    test_kinds, tmp_path, operator, api_client_for, first_endpoint, second_endpoint, other_plan
) -> None:
    plan = _plan(operator, tmp_path)
    second_plan = _plan(operator, tmp_path, "q") if other_plan else plan
    client = api_client_for(operator)
    first = client.post(
        f"/api/v1/plans/{plan.pk}/{first_endpoint}/", {}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert first.status_code == 202
    refused = client.post(
        f"/api/v1/plans/{second_plan.pk}/{second_endpoint}/",
        {},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "idempotency_key_reused"
    assert Run.objects.count() == 1


def test_the_apply_form_with_the_same_key_and_another_choice_is_refused(
    test_kinds, tmp_path, operator, client
) -> None:
    plan = _plan(operator, tmp_path)
    client.force_login(operator)
    url = f"/plans/{plan.pk}/apply/"
    first = client.post(url, {"idempotency_key": "form-1"})
    assert first.status_code == 302
    same = client.post(url, {"idempotency_key": "form-1"})
    assert same.status_code == 302 and same["Location"] == first["Location"]
    refused = client.post(url, {"idempotency_key": "form-1", "force_rerun": "on"})
    assert refused.status_code == 422
    assert b"idempotency_key_reused" in refused.content
    assert Run.objects.count() == 1
