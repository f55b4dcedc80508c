"""Every page for every role: who may open it, who gets 403, and that anonymous users are
sent to the login page. Partials are checked like their pages."""

from __future__ import annotations

import pytest

from tests.runs_app.views.conftest import html

pytestmark = pytest.mark.django_db

# page → the capability it needs (None: any logged-in user)
PAGES = {
    "/": None,
    "/plans/": "view",
    "/plans/{plan}/": "view",
    "/plans/{plan}/json/": "view",
    "/plans/{plan}/revisions/": "view",
    "/plans/{plan}/revisions/1/": "view",
    "/plans/{plan}/diff/?from=1&to=1": "view",
    "/plans/new/": "plan",
    "/plans/new/json/": "plan",
    "/plans/{plan}/edit/": "plan",
    "/runs/": "view",
    "/runs/{dry}/": "view",
    "/runs/{applied}/": "view",
    "/runs/{applied}/progress/": "view",
    "/runs/{applied}/receipt/": "view",
    "/runs/{dry}/diff/": "view",
    "/runs/{applied}/partitions/{partition}/": "view",
    "/approvals/": "approve",
    "/job-kinds/": "view",
    "/job-kinds/test.echo/": "view",
    "/search/?q=deploy": "view",
    "/search/assets/?q=logo": "view",
    "/audit/": "audit",
}

CAPS = {
    "admiral": {"plan", "submit", "approve", "abort", "replay", "view", "audit"},
    "operator": {"plan", "submit", "abort", "replay", "view"},
    "approver": {"approve", "view", "audit"},
    "viewer": {"view", "audit"},
    "nobody": set(),
}


@pytest.fixture
def urls(plan, dry_run, applied) -> dict[str, str]:
    partition = applied.partitions.first()
    values = {"plan": plan.pk, "dry": dry_run.pk, "applied": applied.pk, "partition": partition.pk}
    return {page: page.format(**values) for page in PAGES}


@pytest.mark.parametrize("role", list(CAPS))
def test_each_role_opens_exactly_the_pages_its_capabilities_allow(
    role, cast, client_for, urls
) -> None:
    client = client_for(cast[role])
    for page, capability in PAGES.items():
        response = client.get(urls[page])
        allowed = capability is None or capability in CAPS[role]
        expected = 200 if allowed else 403
        assert response.status_code == expected, (role, page, response.status_code)


def test_anonymous_users_are_sent_to_the_login_page(client, urls) -> None:
    for page in PAGES:
        response = client.get(urls[page])
        assert response.status_code == 302, page
        assert response["Location"].startswith("/login/?next="), page


def test_partials_requested_directly_are_refused_like_their_pages(client_for, nobody, urls) -> None:
    client = client_for(nobody)
    for page in ("/runs/{applied}/progress/", "/runs/{applied}/receipt/", "/runs/{dry}/diff/"):
        assert client.get(urls[page], HTTP_HX_REQUEST="true").status_code == 403
    response = client.get(urls["/runs/{dry}/"] + "?state=succeeded", HTTP_HX_REQUEST="true")
    assert response.status_code == 403


def test_a_403_page_says_which_capability_is_missing(client_for, viewer) -> None:
    response = client_for(viewer).get("/plans/new/")
    assert response.status_code == 403
    assert "hxo:plan" in html(response)


def test_the_navigation_shows_only_what_the_role_may_use(cast, client_for) -> None:
    def nav(role: str) -> str:
        page = html(client_for(cast[role]).get("/"))
        return page[page.index('<nav class="mainnav"') : page.index("</nav>")]

    assert "Approvals" in nav("approver") and "Audit" in nav("approver")
    assert "Approvals" not in nav("operator") and "Audit" not in nav("operator")
    assert "Admin" in nav("admiral") and "Admin" not in nav("operator")
    assert "Plans" not in nav("nobody") and "API docs" in nav("nobody")
    assert 'data-testid="current-role">viewer<' in html(client_for(cast["viewer"]).get("/"))


@pytest.mark.parametrize(
    ("url", "capability"),
    [
        ("/plans/{plan}/dry-run/", "submit"),
        ("/plans/{plan}/apply/", "submit"),
        ("/runs/{dry}/approve/", "approve"),
        ("/runs/{dry}/reject/", "approve"),
        ("/runs/{applied}/abort/", "abort"),
        ("/runs/{applied}/replay/", "replay"),
    ],
)
def test_actions_are_refused_without_their_capability_and_change_nothing(
    url, capability, cast, client_for, plan, dry_run, applied
) -> None:
    from hxo_site.models import AuditEvent
    from runs_app.models import Approval, Run

    target = url.format(plan=plan.pk, dry=dry_run.pk, applied=applied.pk)
    # Refusals are audited themselves (refused.*); nothing else may change.
    changes = AuditEvent.objects.exclude(action__startswith="refused.")
    before = (Run.objects.count(), Approval.objects.count(), changes.count())
    refused = 0
    for role, caps in CAPS.items():
        if capability in caps:
            continue
        response = client_for(cast[role]).post(target, {"comment": "x"})
        assert response.status_code == 403, (role, url)
        refused += 1
    assert (Run.objects.count(), Approval.objects.count(), changes.count()) == before
    assert AuditEvent.objects.filter(action="refused.permission_denied").count() == refused


def test_the_approvals_link_counts_the_dry_runs_waiting_for_the_user(
    client_for, approver, operator, dry_run
) -> None:
    assert 'data-testid="approvals-waiting">1<' in html(client_for(approver).get("/"))
    assert "approvals-waiting" not in html(client_for(operator).get("/"))
