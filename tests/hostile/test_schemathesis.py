"""Property-based tests of the whole API against its own OpenAPI document (/api/schema/).

schemathesis generates requests for every operation, valid and invalid ones, sends them to
the WSGI application as the admiral (a registry admin holding every capability, so that the
requests get past permissions into the code), and checks that no answer is a 5xx and that
every answer (status, content type, headers, body) is one the document declares.

Runtime is bounded: 25 examples per operation (about 25 s for the whole API), and no
deadline (the first request of a test pays for Django's lazy set-up).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runs_app import services
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, make_test_kinds, stage

# CI runs a fixed set of examples (derandomized: the same requests every run, so a red CI
# is a regression, not a lucky draw); HXO_SCHEMATHESIS_EXAMPLES=500 explores afresh.
EXPLORE = os.environ.get("HXO_SCHEMATHESIS_EXAMPLES", "")
EXAMPLES_PER_OPERATION = int(EXPLORE or 25)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

app = WSGIHandler()
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", app)

# Ids of the objects the fixture made, for path parameters: random ids only ever find 404s.
SEEDED: dict[str, Any] = {}


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Half of the generated paths name objects that exist (read at draw time, after the
    fixture ran), so the operations' real work is exercised as well as their 404s."""
    if not isinstance(path_parameters, dict) or not path_parameters:
        return st.just(path_parameters)
    path = context.operation.path
    known = dict(path_parameters)
    if "id" in known:
        known["id"] = SEEDED["plan"] if path.startswith("/api/v1/plans/") else SEEDED["run"]
    if "kind" in known:
        known["kind"] = TEST_KIND_NOAPPROVAL
    if "version" in known:
        known["version"] = 1
    return st.sampled_from([path_parameters, known])


pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keep_the_test_transaction() -> Iterator[None]:
    # The WSGI handler closes "old" connections when a request starts and finishes, which
    # inside the test's transaction means closing it. Django's test client switches this off
    # the same way.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def admiral_token(admiral, tmp_path: Path) -> str:
    # Something to find: a plan and a finished run, so that reads of real ids are exercised
    # along with the 404s of random ones.
    make_test_kinds()
    plan = services.plan_create(
        actor=admiral,
        document={"name": "seed", "stages": [stage("a", tmp_path, kind=TEST_KIND_NOAPPROVAL)]},
    )
    run = services.run_apply(plan=plan, actor=admiral)
    SEEDED.update(plan=plan.pk, run=run.pk)
    return Token.objects.get_or_create(user=admiral)[0].key


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=not EXPLORE,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_every_request_as_its_schema_says(case: Any, admiral_token: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Token {admiral_token}"}, checks=CHECKS)
