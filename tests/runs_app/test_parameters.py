"""Ids, integers and filters in query strings and forms: one parser, ASCII digits only and
bounded; a bad or repeated value is a 400 naming the parameter, on every filter of every list
endpoint and dashboard page. Never a 500, never "silently every row"."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hxo_site import parameters
from runs_app import services
from runs_app.models import Run
from tests.helpers import drain
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
    for run in (dry, applied):
        drain(run)
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
    """Every route with an <int:...> converter or a regex digit group, as a path template
    ({} for each id)."""
    import re

    from django.urls import URLPattern, URLResolver, get_resolver

    found = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            text = prefix + str(p.pattern).lstrip("^").rstrip("$")
            if isinstance(p, URLResolver):
                walk(p.url_patterns, text)
                continue
            # DRF routers' regexes: a digit group is an id; other groups take a sample value.
            text = re.sub(r"\(\?P<[^>]+>\[0-9\]\+\)", "<int:n>", text)
            text = re.sub(r"\(\?P<kind>[^)]+\)", "deploy.pack", text).replace("\\.", ".")
            if isinstance(p, URLPattern) and "<int:" in text and "(?P<" not in text:
                found.append("/" + re.sub(r"<str:[^>]+>", "x", re.sub(r"<int:[^>]+>", "{}", text)))

    walk(get_resolver().url_patterns, "")
    return sorted(set(found))


INT_ROUTES = _int_routes()


def test_every_int_route_is_found() -> None:
    assert "/api/v1/runs/{}/partitions/" in INT_ROUTES and "/plans/{}/revisions/{}/" in INT_ROUTES
    assert "/api/v1/job-kinds/deploy.pack/versions/{}/" in INT_ROUTES  # a router's regex


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


# --- request bodies: every write endpoint of the OpenAPI document ---------------------------


def _schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


SCHEMA = _schema()
WRITES = sorted(
    (method, path)
    for path, ops in SCHEMA["paths"].items()
    for method in ops
    if method in ("post", "put", "patch")
)


def _body_fields(method: str, path: str) -> dict[str, str]:
    """{field: JSON type} of the endpoint's request body, from its schema component."""
    op = SCHEMA["paths"][path][method]
    content = (op.get("requestBody") or {}).get("content", {}).get("application/json", {})
    ref = content.get("schema", {}).get("$ref", "")
    component = SCHEMA["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return {
        name: prop["type"]
        for name, prop in component.get("properties", {}).items()
        if prop.get("type") in ("boolean", "integer", "string") and not prop.get("readOnly")
    }


# A value of every other JSON type than the field's own.
WRONG_TYPE = {"boolean": "yes", "integer": "7", "string": 5}
ILL_TYPED = [(m, p, f) for m, p in WRITES for f in _body_fields(m, p)]


def _write_url(path: str, world: dict[str, Any]) -> str:
    ids = {"{kind}": "deploy.pack", "{version}": "1"}
    ids["{id}"] = str(world["dry"] if path.startswith("/api/v1/runs/") else world["plan"])
    for name, value in ids.items():
        path = path.replace(name, value)
    return path


def test_every_write_endpoint_is_enumerated() -> None:
    assert ("post", "/api/v1/plans/{id}/dry-run/") in WRITES
    assert ("post", "/api/v1/runs/{id}/abort/") in WRITES and (
        "post",
        "/api/v1/auth/token/",
    ) in WRITES
    assert ("post", "/api/v1/plans/{id}/apply/", "force_rerun") in ILL_TYPED
    assert ("post", "/api/v1/runs/{id}/approve/", "comment") in ILL_TYPED


@pytest.mark.parametrize("body", [[1], "x", 1, None], ids=["list", "string", "number", "null"])
@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_body_that_is_not_an_object_is_a_400_on_every_write_endpoint(
    world, admiral, api_client_for, method, path, body
) -> None:
    client = api_client_for(admiral)
    response = getattr(client, method)(
        _write_url(path, world), json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 400, response.content[:300]
    assert response.json()["code"] in ("invalid_type", "validation_failed")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_an_unknown_field_is_a_400_naming_it_on_every_write_endpoint(
    world, admiral, api_client_for, method, path
) -> None:
    """`POST /plans/{id}/dry-run/ {"force_rerun": "yes"}` used to start a dry-run."""
    client = api_client_for(admiral)
    body = {"revision": "²", "force_rerun": "yes", "zz_unknown": 1}
    known = set(_body_fields(method, path)) | {"stages", "name", "stage", "plan"}
    response = getattr(client, method)(_write_url(path, world), body, format="json")
    assert response.status_code == 400, response.content[:300]
    paths = {e["path"] for e in response.json()["errors"]}
    assert "zz_unknown" in paths or {"", "stage"} & paths or known & paths, response.json()
    assert Run.objects.count() == 2  # nothing started


@pytest.mark.parametrize(("method", "path", "field"), ILL_TYPED)
def test_an_ill_typed_field_is_a_400_naming_it_on_every_write_endpoint(
    world, admiral, api_client_for, method, path, field
) -> None:
    client = api_client_for(admiral)
    kind = _body_fields(method, path)[field]
    response = getattr(client, method)(
        _write_url(path, world), {field: WRONG_TYPE[kind]}, format="json"
    )
    assert response.status_code == 400, response.content[:300]
    assert any(e["path"].split(".")[0] == field for e in response.json()["errors"]), response.json()
    assert Run.objects.count() == 2


# --- integer query parameters: every one of the OpenAPI document ---------------------------

INT_QUERIES = sorted(
    (path, p["name"])
    for path, ops in SCHEMA["paths"].items()
    for method, op in ops.items()
    if method == "get"
    for p in op.get("parameters", [])
    if p["in"] == "query" and p.get("schema", {}).get("type") == "integer"
)


def test_every_integer_query_parameter_is_enumerated() -> None:
    assert ("/api/v1/runs/{id}/diff/", "against") in INT_QUERIES
    assert ("/api/v1/runs/", "page") in INT_QUERIES


@pytest.mark.parametrize("bad", ["²", "٣", "abc", "1.0", "9" * 30])
@pytest.mark.parametrize(("path", "name"), INT_QUERIES)
def test_a_bad_integer_query_parameter_is_refused_on_every_endpoint(
    world, admiral, api_client_for, path, name, bad
) -> None:
    """`GET /runs/{id}/diff/?against=²` was a 500; a page "٣" must not read as page 3."""
    url = _write_url(path, world).replace("{kind}", "deploy.pack")
    response = _get(api_client_for(admiral), url + ("?q=x" if "search" in url else ""), name, bad)
    assert response.status_code in (400, 404), (url, response.status_code, response.content[:200])
    assert response.json()["code"] in ("invalid_value", "not_found")
