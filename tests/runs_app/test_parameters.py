"""Ids, integers and filters in query strings and forms: one parser, ASCII digits only and
bounded; a bad or repeated value is a 400 naming the parameter, on every filter of every list
endpoint and dashboard page. Never a 500, never "silently every row"."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from blueprints_app import parameters
from runs_app import services, tasks
from runs_app.models import Run
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(test_kinds, tmp_path, operator, admiral) -> dict[str, Any]:
    plan = services.plan_create(
        actor=operator,
        document={"name": "p", "stages": [stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL)]},
    )
    dry = services.run_start_dry_run(plan=plan, actor=operator)
    applied = services.run_apply(plan=plan, actor=operator)
    with mock.patch.object(tasks, "close_old_connections", lambda: None):
        for run in (dry, applied):
            for _ in range(20):
                tasks.drain(run.pk, budget_s=30)
                if Run.objects.get(pk=run.pk).is_finished:
                    break
    return {"plan": plan.pk, "dry": dry.pk, "run": applied.pk}


# --- the parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["²", "٣", "abc", "", " 1", "1 ", "+1", "-1", "1.0", "1e3", "0x10", "9" * 20, "9" * 5000],
)
def test_the_id_parser_takes_ascii_digits_in_range_only(raw: str) -> None:
    with pytest.raises(parameters.ParameterError) as caught:
        parameters.parse_id(raw, name="plan")
    assert caught.value.name == "plan"
    assert caught.value.as_dict()["code"] == "invalid_value"


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("007", 7), (str(2**63 - 1), 2**63 - 1)])
def test_the_id_parser_reads_ids(raw: str, value: int) -> None:
    assert parameters.parse_id(raw, name="x") == value


# --- every filter of every API list endpoint ----------------------------------------------

# (url template, parameter, a good value, bad values)
API_FILTERS = [
    ("/api/v1/runs/", "plan", "{plan}", ["abc", "²", "٣", "0", "-1", "1.0", str(2**63)]),
    ("/api/v1/runs/", "state", "succeeded", ["bogus", "SUCCEEDED"]),
    ("/api/v1/runs/", "mode", "apply", ["bogus"]),
    ("/api/v1/runs/{run}/partitions/", "stage", "a", ["nope"]),
    ("/api/v1/runs/{run}/partitions/", "state", "succeeded", ["bogus"]),
    ("/api/v1/runs/{run}/diff/", "against", "{dry}", ["²", "abc", str(2**64)]),
    ("/api/v1/audit/", "user", "otto", ["x" * 151]),
    ("/api/v1/audit/", "action", "run.", ["x" * 101]),
    ("/api/v1/audit/", "object_type", "run", ["x" * 51]),
    ("/api/v1/audit/", "object_id", "{run}", ["x" * 65]),
    ("/api/v1/search/docs/?q=x", "workspace", "demo", ["nope"]),
    ("/api/v1/search/assets/?q=x", "workspace", "demo", ["nope"]),
]
BAD_API = [(u, p, b) for u, p, _, bads in API_FILTERS for b in bads]


def _url(template: str, world: dict[str, Any]) -> str:
    return template.format(**world)


def _get(client: Any, url: str, name: str, *values: str) -> Any:
    joiner = "&" if "?" in url else "?"
    from urllib.parse import urlencode

    return client.get(url + joiner + urlencode([(name, v) for v in values]))


@pytest.mark.parametrize(("url", "name", "bad"), BAD_API)
def test_a_bad_filter_value_is_a_400_naming_the_parameter(
    world, admiral, api_client_for, url, name, bad
) -> None:
    response = _get(api_client_for(admiral), _url(url, world), name, bad)
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["code"] == "invalid_value"
    assert body["errors"][0]["path"] == name


@pytest.mark.parametrize(("url", "name", "good", "bads"), API_FILTERS)
def test_a_repeated_filter_is_a_400_never_its_last_value(
    world, admiral, api_client_for, url, name, good, bads
) -> None:
    good = good.format(**world)
    client = api_client_for(admiral)
    alone = _get(client, _url(url, world), name, good)
    assert alone.status_code == 200, alone.content[:300]
    response = _get(client, _url(url, world), name, good, good)
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == name


def test_filters_filter(world, admiral, api_client_for) -> None:
    client = api_client_for(admiral)
    succeeded = Run.objects.filter(state="succeeded").count()
    assert client.get("/api/v1/runs/?state=succeeded").json()["count"] == succeeded > 0
    assert client.get("/api/v1/runs/?state=failed").json()["count"] == 0
    assert client.get("/api/v1/runs/?mode=dry_run").json()["count"] == 1
    assert client.get(f"/api/v1/runs/?plan={world['plan']}").json()["count"] == 2
    assert client.get(f"/api/v1/runs/?plan={world['plan'] + 1}").json()["count"] == 0


# --- the dashboard --------------------------------------------------------------------------

HTML_FILTERS = [
    ("/runs/", "plan", "{plan}", ["abc", "²", "٣", "0", str(2**63)]),
    ("/runs/", "state", "succeeded", ["bogus"]),
    ("/runs/", "mode", "apply", ["bogus"]),
    ("/runs/{run}/", "stage", "a", ["nope"]),
    ("/runs/{run}/", "state", "succeeded", ["bogus"]),
    ("/runs/{run}/diff/", "against", "{dry}", ["²", "abc", str(2**64)]),
    ("/audit/", "actor", "otto", ["x" * 151]),
    ("/audit/", "action", "plan.create", ["bogus"]),
    ("/audit/", "object_type", "plan", ["bogus"]),
    ("/audit/", "since", "2020-01-01", ["yesterday"]),
    ("/search/", "q", "x", ["x" * 201]),
    ("/search/assets/", "q", "x", ["x" * 201]),
    ("/plans/", "q", "p", ["x" * 201]),
    ("/plans/{plan}/diff/", "from", "1", ["²", "abc"]),
]
BAD_HTML = [(u, p, b) for u, p, _, bads in HTML_FILTERS for b in bads]


@pytest.mark.parametrize(("url", "name", "bad"), BAD_HTML)
def test_a_bad_filter_on_a_dashboard_page_is_a_400_page_naming_it(
    world, admiral, client, url, name, bad
) -> None:
    client.force_login(admiral)
    response = _get(client, _url(url, world), name, bad)
    assert response.status_code == 400, response.content[:300]
    assert f"<code>{name}</code>" in response.content.decode()


@pytest.mark.parametrize(("url", "name", "good", "bads"), HTML_FILTERS)
def test_a_repeated_filter_on_a_dashboard_page_is_a_400(
    world, admiral, client, url, name, good, bads
) -> None:
    good = good.format(**world)
    client.force_login(admiral)
    assert _get(client, _url(url, world), name, good).status_code == 200
    response = _get(client, _url(url, world), name, good, good)
    assert response.status_code == 400
    assert f"<code>{name}</code>" in response.content.decode()


# --- the editor's form fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "field", "value"),
    [
        ("/plans/new/", "_action", "remove:²"),
        ("/plans/new/", "_action", "up:٣"),
        ("/plans/new/", "_action", "down:" + "9" * 30),
        ("/plans/new/", "_stages", "²"),
        ("/plans/validate/", "_stages", "²"),
        ("/plans/validate/", "_plan", "²"),
    ],
)
def test_a_bad_number_in_an_editor_form_is_a_400(
    test_kinds, operator, client, tmp_path, url, field, value
) -> None:
    client.force_login(operator)
    data = {
        "name:string": "p",
        "description:text": "",
        "_stages": ["0"],
        "stages[0].id:string": "a",
        "stages[0].kind:string": TEST_KIND_NOAPPROVAL,
        "stages[0].partitioner:string": "test_items",
        "stages[0].executor:string": "test_append",
        "stages[0].params.items:integer": "2",
        "stages[0].params.dir:string": str(tmp_path),
    }
    data[field] = value
    response = client.post(url, data)
    assert response.status_code == 400
    assert f"<code>{field}</code>" in response.content.decode()


@pytest.mark.parametrize("value", ["٣", "1" * 40, "²"])
def test_an_editor_integer_field_takes_ascii_digits_only(
    test_kinds, operator, client, tmp_path, value
) -> None:
    client.force_login(operator)
    response = client.post(
        "/plans/new/",
        {
            "name:string": "p",
            "description:text": "",
            "_stages": ["0"],
            "stages[0].id:string": "a",
            "stages[0].kind:string": TEST_KIND_NOAPPROVAL,
            "stages[0].partitioner:string": "test_items",
            "stages[0].executor:string": "test_append",
            "stages[0].params.items:integer": value,
            "stages[0].params.dir:string": str(tmp_path),
            "_action": "save",
        },
    )
    assert response.status_code in (200, 400)
    assert "is not a whole number" in response.content.decode()
    assert not Run.objects.exists()


# --- ids in paths -------------------------------------------------------------------------


def _int_routes() -> list[str]:
    """Every route with an <int:...> converter, as a path template ({} for each id)."""
    import re

    from django.urls import URLPattern, URLResolver, get_resolver

    found = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            text = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, text)
            elif isinstance(p, URLPattern) and "<int:" in text:
                found.append("/" + re.sub(r"<str:[^>]+>", "x", re.sub(r"<int:[^>]+>", "{}", text)))

    walk(get_resolver().url_patterns, "")
    return sorted(set(found))


INT_ROUTES = _int_routes()


def test_every_int_route_is_found() -> None:
    assert "/api/v1/runs/{}/partitions/" in INT_ROUTES and "/plans/{}/revisions/{}/" in INT_ROUTES


@pytest.mark.parametrize("number", [str(2**63), "9" * 30])
@pytest.mark.parametrize("route", INT_ROUTES)
def test_an_id_past_the_column_in_a_path_finds_nothing(
    world, admiral, client, route, number
) -> None:
    client.force_login(admiral)
    url = route.replace("{}", number)
    posts = ("approve/", "reject/", "abort/", "replay/", "dry-run/", "apply/", "migrate/")
    if route.endswith(posts):
        response = client.post(url, "{}", content_type="application/json")
    else:
        response = client.get(url)
    assert response.status_code in (404, 405), (url, response.status_code)
