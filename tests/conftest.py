"""Fixtures shared by every test: a fixed cast of users, one per role, and API clients.

The cast: `admiral` (every capability, staff: a registry admin), `operator`, `approver`,
`viewer`, and `nobody` (a user with no role). Roles are the groups made by the
blueprints_app migrations.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

# --- Test settings -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # The production hasher is slow on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_throttles(settings, request: pytest.FixtureRequest) -> None:
    # Login and token throttles count per client address, and every test client is
    # 127.0.0.1: each test gets its own empty counters instead of the shared file or Redis
    # cache (where one test's failures would lock out the next).
    settings.CACHES = {
        **settings.CACHES,
        "hxo-throttle": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"throttle-{request.node.nodeid}",
        },
    }


# --- The cast ----------------------------------------------------------------------------


def _make_user(username: str, role: str | None = None, *, staff: bool = False) -> User:
    user = User.objects.create_user(username=username, password=f"{username}-password")
    user.is_staff = staff
    user.save()
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def admiral(db: None) -> User:
    return _make_user("ada", "admiral", staff=True)


@pytest.fixture
def operator(db: None) -> User:
    return _make_user("otto", "operator")


@pytest.fixture
def approver(db: None) -> User:
    return _make_user("april", "approver")


@pytest.fixture
def viewer(db: None) -> User:
    return _make_user("vera", "viewer")


@pytest.fixture
def nobody(db: None) -> User:
    return _make_user("nora")


# --- API clients -------------------------------------------------------------------------


@pytest.fixture
def api_client_for(db: None) -> Callable[[User], APIClient]:
    """`api_client_for(user)`: an APIClient sending `Authorization: Token <key>` for user."""

    def make(user: User) -> APIClient:
        token, _ = Token.objects.get_or_create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()
