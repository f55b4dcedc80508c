"""Fixtures for the dashboard's page tests: a logged-in client per role, and plans and runs
made through the services (runs executed inline by the drainer)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from runs_app import services
from runs_app.models import Plan, Run
from tests.helpers import drain
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, stage

ROLES = ("admiral", "operator", "approver", "viewer", "nobody")


@pytest.fixture
def client_for(db: None) -> Callable[[User], Client]:
    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def cast(admiral, operator, approver, viewer, nobody) -> dict[str, User]:
    return {
        "admiral": admiral,
        "operator": operator,
        "approver": approver,
        "viewer": viewer,
        "nobody": nobody,
    }


@pytest.fixture
def plan(test_kinds, operator, tmp_path: Path) -> Plan:
    return services.plan_create(
        actor=operator,
        document={
            "name": "nightly",
            "description": "two stages",
            "stages": [
                stage("a", tmp_path, items=4, kind=TEST_KIND),
                stage("b", tmp_path, items=2, kind=TEST_KIND, depends_on=["a"]),
            ],
        },
    )


@pytest.fixture
def quick_plan(test_kinds, operator, tmp_path: Path) -> Plan:
    return services.plan_create(
        actor=operator,
        document={
            "name": "quick",
            "stages": [stage("q", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)],
        },
    )


@pytest.fixture
def dry_run(plan: Plan, operator) -> Run:
    """A finished dry-run awaiting approval, requested by the operator (the plan's author)."""
    return drain(services.run_start_dry_run(plan=plan, actor=operator))


@pytest.fixture
def applied(plan: Plan, dry_run: Run, operator, approver) -> Run:
    services.run_approve(run=dry_run, actor=approver, comment="ok")
    return drain(services.run_apply(plan=plan, actor=operator, dry_run_id=dry_run.pk))


def html(response: Any) -> str:
    return response.content.decode()


@pytest.fixture
def target(tmp_path: Path, settings: Any) -> Path:
    """A registered SQLite target `t` with a table `items` of 5 rows (ids 1-5)."""
    path = tmp_path / "t.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, '')", [(i,) for i in range(1, 6)])
    conn.close()
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "t": f"sqlite:///{path}"}
    return path
