from __future__ import annotations

import pytest

from blueprints_app.bootstrap import create_roles, load_contract
from tests.runs_app.testkinds import make_test_kinds


@pytest.fixture(autouse=True)
def _registry_rows(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush the database, data migrations included: put the rows back."""
    if request.node.get_closest_marker("django_db"):
        request.getfixturevalue("db")
        load_contract()
        create_roles()


@pytest.fixture
def test_kinds(db: None) -> None:
    make_test_kinds()


@pytest.fixture(autouse=True)
def _quick_retries(settings) -> None:
    # A failed attempt is due again at once: the test sweeps instead of waiting.
    settings.HXO_WEBHOOK_BACKOFF_S = 0
    settings.HXO_WEBHOOK_TIMEOUT_S = 2
    settings.HXO_WEBHOOK_ALLOWED_HOSTS = []
