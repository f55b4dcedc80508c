"""Fixtures for the fault tests: the registry rows a transactional test needs, the cast's API
tokens, a deployment whose processes are always killed at the end, and a private Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from blueprints_app.bootstrap import create_roles, load_contract
from hxo_site.authentication import token_for
from tests.faults.harness import Deployment, RedisServer, require
from tests.runs_app.testkinds import make_test_kinds


@pytest.fixture(autouse=True)
def _registry_rows(transactional_db: None) -> None:
    # Transactional tests flush the database, data migrations included: put the rows back.
    load_contract()
    create_roles()
    make_test_kinds()


@pytest.fixture
def tokens(operator, approver) -> dict[str, str]:
    return {"operator": token_for(operator).key, "approver": token_for(approver).key}


@pytest.fixture
def deployment_factory(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(**env: str) -> Deployment:
        deployment = Deployment(tmp_path / f"deployment-{len(made)}", **env)
        made.append(deployment)
        return deployment

    try:
        yield make
    finally:
        # Before the test database is flushed: no process may keep a connection to it.
        for deployment in made:
            deployment.close()


@pytest.fixture
def deployment(deployment_factory) -> Deployment:
    """A deployment on the suite's own broker (the ORM broker on SQLite, Redis on the
    PostgreSQL pass), with a queue of its own."""
    import uuid

    env = {"HXO_BROKER": settings.HXO_BROKER, "HXO_CLUSTER_NAME": f"hxo-fault-{uuid.uuid4().hex}"}
    if settings.HXO_BROKER == "redis":
        env["REDIS_URL"] = settings.REDIS_URL
    return deployment_factory(**env)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    require(bool(server.binary), "redis-server is not installed (apt-get install redis-server)")
    server.start()
    try:
        yield server
    finally:
        server.stop()
