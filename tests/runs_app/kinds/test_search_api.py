"""GET /api/v1/search/assets/?q= and /api/v1/search/docs/?q=: capability, errors, pages."""

from __future__ import annotations

import pytest
from django.utils import timezone

from runs_app.models import AssetIndexEntry, DocPage

pytestmark = pytest.mark.django_db

DOCS = "/api/v1/search/docs/"
ASSETS = "/api/v1/search/assets/"


@pytest.fixture
def indexed(db: None) -> None:
    now = timezone.now()
    for i in range(30):
        DocPage.objects.create(
            workspace="demo",
            route=f"/docs/guide/page-{i:02d}/",
            prefix="/docs/guide/",
            path=f"docs/guide/page-{i:02d}.md",
            title=f"Guide page {i}",
            headings="Overview\nDetails",
            body=f"Page {i} explains how the otter ledger works" + (" otter" * i),
            sha256="0" * 64,
            indexed_at=now,
        )
    AssetIndexEntry.objects.create(
        workspace="demo",
        path="assets/images/otter.png",
        name="otter.png",
        bucket="images",
        size=10,
        sha256="1" * 64,
        media_type="image/png",
        width=4,
        height=3,
        indexed_at=now,
    )


def test_a_viewer_gets_ranked_paginated_doc_hits(api_client_for, viewer, indexed):
    response = api_client_for(viewer).get(DOCS, {"q": "otter"})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 30
    assert body["query"] == "otter"
    assert len(body["results"]) == 20
    assert body["next"] is not None and body["previous"] is None
    first = body["results"][0]
    assert set(first) >= {"route", "title", "path", "score", "snippet", "snippet_html"}
    assert first["route"] == "/docs/guide/page-29/"  # the most "otter"s ranks first
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)

    page2 = api_client_for(viewer).get(DOCS, {"q": "otter", "page": 2}).json()
    assert len(page2["results"]) == 10
    assert not {r["route"] for r in page2["results"]} & {r["route"] for r in body["results"]}


def test_asset_hits_carry_the_index_fields(api_client_for, viewer, indexed):
    body = api_client_for(viewer).get(ASSETS, {"q": "otter"}).json()

    assert body["count"] == 1
    hit = body["results"][0]
    assert (hit["path"], hit["media_type"], hit["width"], hit["height"]) == (
        "assets/images/otter.png",
        "image/png",
        4,
        3,
    )
    assert hit["snippet_html"] == "assets/images/<mark>otter</mark>.png"


@pytest.mark.parametrize("url", [DOCS, ASSETS])
@pytest.mark.parametrize("params", [{}, {"q": ""}, {"q": "   "}])
def test_a_missing_or_empty_query_is_a_400_with_its_code(api_client_for, viewer, url, params):
    response = api_client_for(viewer).get(url, params)

    assert response.status_code == 400
    assert response.json()["code"] == "query_required"


@pytest.mark.parametrize("url", [DOCS, ASSETS])
def test_an_overlong_query_is_a_400_with_its_code(api_client_for, viewer, url):
    response = api_client_for(viewer).get(url, {"q": "x" * 201})

    assert response.status_code == 400
    assert response.json()["code"] == "query_too_long"


@pytest.mark.parametrize("url", [DOCS, ASSETS])
def test_search_needs_the_view_capability(api_client_for, nobody, anonymous_client, url, indexed):
    assert api_client_for(nobody).get(url, {"q": "otter"}).status_code == 403
    response = anonymous_client.get(url, {"q": "otter"})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("url", [DOCS, ASSETS])
def test_count_is_every_match_beyond_the_hits_limit(api_client_for, viewer, url):
    now = timezone.now()
    DocPage.objects.bulk_create(
        DocPage(
            workspace="demo",
            route=f"/docs/many/p{i:03d}/",
            prefix="/docs/many/",
            path=f"docs/many/p{i:03d}.md",
            title=f"Page {i}",
            body="A lyrebird sings.",
            sha256="0" * 64,
            indexed_at=now,
        )
        for i in range(230)
    )
    AssetIndexEntry.objects.bulk_create(
        AssetIndexEntry(
            workspace="demo",
            path=f"assets/lyrebird-{i:03d}.png",
            name=f"lyrebird-{i:03d}.png",
            bucket="images",
            size=1,
            sha256="1" * 64,
            media_type="image/png",
            indexed_at=now,
        )
        for i in range(230)
    )

    body = api_client_for(viewer).get(url, {"q": "lyrebird"}).json()

    assert body["count"] == 230
    assert body["results_available"] == body["hits_limit"] == 200
    last = api_client_for(viewer).get(url, {"q": "lyrebird", "page": 10}).json()
    assert len(last["results"]) == 20 and last["next"] is None
