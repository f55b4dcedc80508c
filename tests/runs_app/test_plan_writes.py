"""Plan writes never lose an update: PATCHes merge under the plan's row lock, and `If-Match`
with the revision digest (the plan's `ETag`) refuses a write based on an older revision."""

from __future__ import annotations

import functools

import pytest

from runs_app import services
from runs_app.models import Plan, PlanRevision
from tests.runs_app.test_concurrency import in_threads
from tests.runs_app.testkinds import TEST_KIND, stage

ROUNDS = 10


def _patch(pk: int, actor, **fields: str) -> PlanRevision:
    return services.plan_update(
        plan=Plan.objects.get(pk=pk), actor=actor, document=fields, partial=True
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_patches_of_different_fields_both_land(test_kinds, tmp_path, operator) -> None:
    for round_ in range(ROUNDS):
        plan = services.plan_create(
            actor=operator,
            document={"name": f"p{round_}", "stages": [stage("a", tmp_path)]},
        )
        results = in_threads(
            [
                functools.partial(_patch, plan.pk, operator, name=f"renamed {round_}"),
                functools.partial(_patch, plan.pk, operator, description=f"described {round_}"),
            ]
        )
        assert not [r for r in results if isinstance(r, Exception)], results
        latest = Plan.objects.get(pk=plan.pk).latest_revision
        assert latest.number == 3
        assert latest.document["name"] == f"renamed {round_}"
        assert latest.document["description"] == f"described {round_}"
        plan.refresh_from_db()
        assert (plan.name, plan.description) == (f"renamed {round_}", f"described {round_}")


@pytest.mark.django_db(transaction=True)
def test_concurrent_api_patches_keep_both_changes(
    test_kinds, tmp_path, operator, api_client_for
) -> None:
    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path)]}
    )
    url = f"/api/v1/plans/{plan.pk}/"
    for round_ in range(ROUNDS):
        one, two = api_client_for(operator), api_client_for(operator)
        results = in_threads(
            [
                functools.partial(one.patch, url, {"name": f"n{round_}"}, format="json"),
                functools.partial(two.patch, url, {"description": f"d{round_}"}, format="json"),
            ]
        )
        assert [r.status_code for r in results] == [200, 200], results
        doc = Plan.objects.get(pk=plan.pk).latest_revision.document
        assert (doc["name"], doc["description"]) == (f"n{round_}", f"d{round_}")


@pytest.fixture
def plan(test_kinds, tmp_path, operator) -> Plan:
    return services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("a", tmp_path)]}
    )


def test_plan_reads_and_writes_carry_the_revision_digest_as_etag(
    plan, operator, api_client_for
) -> None:
    client = api_client_for(operator)
    got = client.get(f"/api/v1/plans/{plan.pk}/")
    assert got["ETag"] == f'"{plan.latest_revision.digest}"'
    assert got["ETag"] == f'"{got.json()["digest"]}"'
    for method in ("patch", "put"):
        body = (
            {"description": method}
            if method == "patch"
            else {
                **plan.latest_revision.document,
                "description": method,
            }
        )
        written = getattr(client, method)(f"/api/v1/plans/{plan.pk}/", body, format="json")
        assert written.status_code == 200
        latest = Plan.objects.get(pk=plan.pk).latest_revision
        assert latest.document["description"] == method
        assert written["ETag"] == f'"{latest.digest}"'


@pytest.mark.parametrize("method", ["patch", "put"])
def test_if_match_with_an_older_digest_is_refused_and_writes_nothing(
    plan, operator, api_client_for, method
) -> None:
    client = api_client_for(operator)
    old_etag = client.get(f"/api/v1/plans/{plan.pk}/")["ETag"]
    services.plan_update(
        plan=plan, actor=operator, document={"description": "someone else"}, partial=True
    )
    body = {"name": "mine"} if method == "patch" else {**plan.latest_revision.document}
    body["name"] = "mine"
    refused = getattr(client, method)(
        f"/api/v1/plans/{plan.pk}/", body, format="json", HTTP_IF_MATCH=old_etag
    )
    assert refused.status_code == 412
    assert refused.json()["code"] == "precondition_failed"
    assert refused.json()["errors"][0]["path"] == "If-Match"
    assert PlanRevision.objects.filter(plan=plan).count() == 2
    assert Plan.objects.get(pk=plan.pk).latest_revision.document["name"] == "p"


@pytest.mark.parametrize("how", ["current", "listed", "star"])
def test_if_match_naming_the_latest_digest_lets_the_write_through(
    plan, operator, api_client_for, how
) -> None:
    client = api_client_for(operator)
    etag = client.get(f"/api/v1/plans/{plan.pk}/")["ETag"]
    header = {"current": etag, "listed": f'"0000", {etag}', "star": "*"}[how]
    done = client.patch(
        f"/api/v1/plans/{plan.pk}/", {"name": "mine"}, format="json", HTTP_IF_MATCH=header
    )
    assert done.status_code == 200
    assert Plan.objects.get(pk=plan.pk).latest_revision.document["name"] == "mine"


def test_a_malformed_if_match_is_a_400_with_a_code(plan, operator, api_client_for) -> None:
    refused = api_client_for(operator).patch(
        f"/api/v1/plans/{plan.pk}/", {"name": "x"}, format="json", HTTP_IF_MATCH="abc"
    )
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_value"
    assert PlanRevision.objects.filter(plan=plan).count() == 1


def test_the_editor_refuses_to_save_over_a_revision_saved_since_it_was_opened(
    plan, operator, client, tmp_path
) -> None:
    client.force_login(operator)
    page = client.get(f"/plans/{plan.pk}/edit/").content.decode()
    base = plan.latest_revision.digest
    assert f'name="_base" value="{base}"' in page
    services.plan_update(
        plan=plan, actor=operator, document={"description": "someone else"}, partial=True
    )
    form = {
        "name:string": "mine",
        "description:text": "",
        "_stages": ["0"],
        "_sig": [f"{TEST_KIND}|test_items|test_append"],
        "stages[0].id:string": "a",
        "stages[0].kind:string": TEST_KIND,
        "stages[0].partitioner:string": "test_items",
        "stages[0].executor:string": "test_append",
        "stages[0].params.items:integer": "3",
        "stages[0].params.dir:string": str(tmp_path),
        "_plan": str(plan.pk),
        "_base": base,
        "_action": "save",
    }
    refused = client.post(f"/plans/{plan.pk}/edit/", form)
    assert refused.status_code == 400
    assert 'data-code="precondition_failed"' in refused.content.decode()
    latest = Plan.objects.get(pk=plan.pk).latest_revision
    assert latest.number == 2 and latest.document["description"] == "someone else"
    form["_base"] = latest.digest
    saved = client.post(f"/plans/{plan.pk}/edit/", form)
    assert saved.status_code == 302
    assert Plan.objects.get(pk=plan.pk).latest_revision.document["name"] == "mine"


def test_the_json_page_refuses_to_save_over_a_revision_saved_since_it_was_opened(
    plan, operator, client
) -> None:
    import json

    client.force_login(operator)
    base = plan.latest_revision.digest
    page = client.get(f"/plans/{plan.pk}/json/").content.decode()
    assert f'name="_base" value="{base}"' in page
    services.plan_update(
        plan=plan, actor=operator, document={"description": "someone else"}, partial=True
    )
    mine = {**plan.latest_revision.document, "description": "", "name": "mine"}
    form = {"document": json.dumps(mine), "_action": "save", "_base": base}
    refused = client.post(f"/plans/{plan.pk}/json/", form)
    assert refused.status_code == 400
    assert 'data-code="precondition_failed"' in refused.content.decode()
    latest = Plan.objects.get(pk=plan.pk).latest_revision
    assert latest.number == 2 and latest.document["name"] == "p"
    form["_base"] = latest.digest
    assert client.post(f"/plans/{plan.pk}/json/", form).status_code == 302
    assert Plan.objects.get(pk=plan.pk).latest_revision.document["name"] == "mine"
