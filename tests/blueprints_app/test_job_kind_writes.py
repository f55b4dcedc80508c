"""Registry writes never lose an update: concurrent PATCHes of different fields of one job
kind both land (the fields are applied to the row under its lock)."""

from __future__ import annotations

import functools

import pytest

from blueprints_app.models import JobKind
from tests.runs_app.test_concurrency import in_threads

ROUNDS = 10


@pytest.mark.django_db(transaction=True)
def test_concurrent_patches_of_one_job_kind_keep_both_changes(
    django_user_model, api_client_for
) -> None:
    from blueprints_app.bootstrap import create_roles, load_contract

    load_contract()  # transactional tests flush the data migrations' rows
    create_roles()
    admiral = django_user_model.objects.create_superuser("root", password="root-password")
    url = "/api/v1/job-kinds/deploy.pack/"
    for round_ in range(ROUNDS):
        one, two = api_client_for(admiral), api_client_for(admiral)
        results = in_threads(
            [
                functools.partial(one.patch, url, {"description": f"d{round_}"}, format="json"),
                functools.partial(two.patch, url, {"default_slo_ms": 1000 + round_}, format="json"),
            ]
        )
        assert [r.status_code for r in results] == [200, 200], [r.content for r in results]
        kind = JobKind.objects.get(kind="deploy.pack")
        assert (kind.description, kind.default_slo_ms) == (f"d{round_}", 1000 + round_)
