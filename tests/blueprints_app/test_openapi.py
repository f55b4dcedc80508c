"""GET /api/schema/ and /api/docs/: an OpenAPI 3 document and a docs page without any CDN."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_the_schema_endpoint_serves_openapi_3_with_the_registry_paths(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/v1/job-kinds/",
        "/api/v1/job-kinds/{kind}/",
        "/api/v1/partitioners/",
        "/api/v1/executors/",
        "/api/v1/validate/",
    ):
        assert path in schema["paths"]


def test_the_schema_documents_token_authentication(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_the_schema_generates_without_warnings_and_validates(tmp_path):
    # --fail-on-warn turns every drf-spectacular warning (an unannotated view...) into a failure.
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml")
    )

    assert (tmp_path / "schema.yml").read_text().startswith("openapi: 3.")


def test_the_docs_page_references_no_external_host(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "http://" not in html
    assert "https://" not in html
    assert not re.search(r"""(src|href)=["']//""", html)
    # What the page loads (scripts, style sheets, icons); <a> links are navigation.
    assets = re.findall(r"""src=["']([^"']+)["']""", html) + re.findall(
        r"""<link[^>]*href=["']([^"']+)["']""", html
    )
    assert assets
    for asset in assets:
        if asset == "/api/docs/?script=":
            # Swagger UI's start-up script, served by the docs view itself (no inline script
            # under the Content-Security-Policy).
            script = client.get(asset)
            assert script.status_code == 200
            assert script["Content-Type"].startswith("application/javascript")
            continue
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a local file"
    assert "<script>" not in html and "<style>" not in html


def test_the_docs_page_links_the_schema_as_json_a_browser_shows(client):
    # Issue 15 §7: /api/schema/ answers YAML (application/vnd.oai.openapi), which a browser
    # downloads; the docs page links the JSON form.
    html = client.get("/api/docs/").content.decode()
    link = re.search(r'<a href="([^"]+)" data-testid="schema-json">JSON</a>', html)
    assert link and link.group(1) == "/api/schema/?format=json"

    response = client.get(link.group(1))

    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] in {
        "application/json",
        "application/vnd.oai.openapi+json",
    }
    assert response.json()["openapi"].startswith("3.")
