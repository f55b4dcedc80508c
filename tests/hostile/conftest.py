"""Shared by the hostile-input tests: a database snapshot to prove a refusal changed nothing,
a refusal checker, and a plan and runs to aim at.

A refusal may leave exactly one kind of trace: its own audit event (`refused.*`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.db.models import Model

from hxo_site.models import AuditEvent
from runs_app import services
from runs_app.models import Plan, Run
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, make_test_kinds, stage


def snapshot() -> dict[str, int]:
    """Row counts of every model, audit events of refusals left out, plus a fingerprint of
    the job-kind registry (an edit changes no count)."""
    counts: dict[str, int] = {}
    for model in apps.get_models():
        model_cls: type[Model] = model
        if not model_cls._meta.managed or model_cls._meta.proxy:
            continue  # no table of its own (capabilities are permission holders)
        qs = model_cls._default_manager.all()
        if model_cls is AuditEvent:
            qs = qs.exclude(action__startswith="refused.")
        counts[model_cls._meta.label] = qs.count()
    from blueprints_app.models import JobKind

    counts["registry"] = hash(
        tuple(JobKind.objects.order_by("kind").values_list("kind", "version", "description"))
    )
    return counts


def assert_refused(response: Any, status: int | tuple[int, ...], code: str | None = None) -> dict:
    """A 4xx in the API's error shape, with the expected code."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.content[:500])
    assert 400 <= response.status_code < 500
    body = response.json()
    assert set(body) >= {"detail", "code", "errors"}, body
    assert isinstance(body["code"], str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture
def test_kinds(db: None) -> None:
    make_test_kinds()


@pytest.fixture
def plan(test_kinds, operator, tmp_path: Path) -> Plan:
    return services.plan_create(
        actor=operator,
        document={"name": "target", "stages": [stage("a", tmp_path, items=2, kind=TEST_KIND)]},
    )


@pytest.fixture
def quick_plan(test_kinds, operator, tmp_path: Path) -> Plan:
    return services.plan_create(
        actor=operator,
        document={
            "name": "quick",
            "stages": [stage("a", tmp_path, items=2, kind=TEST_KIND_NOAPPROVAL)],
        },
    )


@pytest.fixture
def dry_run(plan: Plan, operator) -> Run:
    return drain(services.run_start_dry_run(plan=plan, actor=operator))


@pytest.fixture
def applied(quick_plan: Plan, operator) -> Run:
    return drain(services.run_apply(plan=quick_plan, actor=operator))


@pytest.fixture
def ctx(plan, dry_run, applied) -> dict[str, Any]:
    """What tests/hostile/endpoints.py aims requests at."""
    return {
        "plan": plan,
        "dry_run": dry_run,
        "applied": applied,
        "plan_document": {"name": plan.name, "stages": plan.latest_revision.stages},
    }


@pytest.fixture
def clients(api_client_for, admiral, operator, approver, viewer, nobody) -> dict[str, Any]:
    return {
        name: api_client_for(user)
        for name, user in {
            "admiral": admiral,
            "operator": operator,
            "approver": approver,
            "viewer": viewer,
            "nobody": nobody,
        }.items()
    }


Snapshot = Callable[[], dict[str, int]]
