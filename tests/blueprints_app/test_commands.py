"""Management commands: hxo_user, hxo_load_registry, hxo_demo_users."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from blueprints_app.demo import DEMO_USERS
from blueprints_app.models import JobKind
from hxo_site.capabilities import has_capability

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def roles_of(username: str) -> list[str]:
    return sorted(User.objects.get(username=username).groups.values_list("name", flat=True))


# --- hxo_user ----------------------------------------------------------------------------


def test_hxo_user_creates_a_user_with_the_role():
    out, _ = run("hxo_user", "olga", "--role", "operator", "--password", "s3cret-pass")

    user = User.objects.get(username="olga")
    assert roles_of("olga") == ["operator"]
    assert user.check_password("s3cret-pass")
    assert user.is_staff is False
    assert has_capability(user, "submit")
    assert "Created" in out


def test_hxo_user_without_a_password_makes_a_token_only_user():
    run("hxo_user", "robot", "--role", "viewer")

    assert User.objects.get(username="robot").has_usable_password() is False


def test_an_admiral_is_staff_and_can_edit_the_registry():
    run("hxo_user", "ada", "--role", "admiral")

    user = User.objects.get(username="ada")
    assert user.is_staff is True
    assert user.has_perm("blueprints_app.change_jobkind")
    assert has_capability(user, "force-merge")


def test_staff_flag_makes_other_roles_staff():
    run("hxo_user", "sam", "--role", "approver", "--staff")

    assert User.objects.get(username="sam").is_staff is True


def test_hxo_user_updates_the_role_to_exactly_the_new_one():
    run("hxo_user", "olga", "--role", "admiral", "--password", "first-pass")

    out, _ = run("hxo_user", "olga", "--role", "viewer")

    user = User.objects.get(username="olga")
    assert roles_of("olga") == ["viewer"]
    assert user.is_staff is False
    assert user.check_password("first-pass")
    assert not has_capability(user, "submit")
    assert "Updated" in out


def test_hxo_user_keeps_groups_that_are_not_roles():
    from django.contrib.auth.models import Group

    run("hxo_user", "olga", "--role", "operator")
    User.objects.get(username="olga").groups.add(Group.objects.create(name="night-shift"))

    run("hxo_user", "olga", "--role", "approver")

    assert roles_of("olga") == ["approver", "night-shift"]


def test_token_prints_only_the_api_token():
    out, _ = run("hxo_user", "ci", "--role", "operator", "--token")

    key = Token.objects.get(user__username="ci").key
    assert out == f"{key}\n"


def test_token_is_reused_on_a_second_call():
    first, _ = run("hxo_user", "ci", "--role", "operator", "--token")
    second, _ = run("hxo_user", "ci", "--role", "viewer", "--token")

    assert first == second
    assert Token.objects.filter(user__username="ci").count() == 1


def test_the_printed_token_authenticates_against_the_api(client):
    out, _ = run("hxo_user", "ci", "--role", "viewer", "--token")

    response = client.get("/api/v1/job-kinds/", HTTP_AUTHORIZATION=f"Token {out.strip()}")

    assert response.status_code == 200


def test_an_unknown_role_is_a_command_error_naming_the_roles():
    with pytest.raises(CommandError, match=r"unknown role 'captain'.*admiral, operator"):
        run("hxo_user", "olga", "--role", "captain")

    assert not User.objects.filter(username="olga").exists()


def test_a_missing_role_is_a_command_error():
    with pytest.raises(CommandError, match="--role"):
        run("hxo_user", "olga")


# --- hxo_load_registry -------------------------------------------------------------------


def test_load_registry_adds_missing_kinds_and_keeps_edited_ones():
    JobKind.objects.filter(kind="docs.index").delete()
    JobKind.objects.filter(kind="deploy.pack").update(default_slo_ms=1)

    out, _ = run("hxo_load_registry")

    assert JobKind.objects.get(kind="docs.index").default_slo_ms == 30000
    assert JobKind.objects.get(kind="deploy.pack").default_slo_ms == 1
    assert "docs.index: created" in out
    assert "deploy.pack: present, kept" in out
    assert "1 created, 5 kept, 0 reset" in out


def test_load_registry_changes_nothing_when_all_kinds_are_there():
    before = list(JobKind.objects.values())

    out, _ = run("hxo_load_registry")

    assert list(JobKind.objects.values()) == before
    assert "0 created, 6 kept" in out


def test_load_registry_reset_restores_the_contract():
    JobKind.objects.filter(kind="deploy.pack").update(default_slo_ms=1, partitioners=["by_module"])

    out, _ = run("hxo_load_registry", "--reset")

    kind = JobKind.objects.get(kind="deploy.pack")
    assert kind.default_slo_ms == 120000
    assert kind.partitioners == ["by_filesize", "by_module"]
    assert "0 created, 0 kept, 6 reset" in out


def test_load_registry_leaves_kinds_outside_the_contract_alone():
    JobKind.objects.create(
        kind="custom.job",
        description="custom",
        partitioners=["by_module"],
        executors=["warm_registry"],
        default_slo_ms=5,
        result_status="done",
    )

    run("hxo_load_registry", "--reset")

    assert JobKind.objects.get(kind="custom.job").default_slo_ms == 5


# --- hxo_demo_users ----------------------------------------------------------------------


def test_demo_users_have_one_role_each_and_their_demo_password():
    out, _ = run("hxo_demo_users")

    for username, (role, password) in DEMO_USERS.items():
        user = User.objects.get(username=username)
        assert roles_of(username) == [role]
        assert user.check_password(password)
        assert f"{username}" in out and password in out
    assert User.objects.get(username="admiral").is_staff is True
    assert {role for role, _ in DEMO_USERS.values()} == {
        "admiral",
        "operator",
        "approver",
        "viewer",
    }


def test_demo_users_twice_changes_nothing():
    run("hxo_demo_users")
    before = list(User.objects.order_by("pk").values())

    out, _ = run("hxo_demo_users")

    assert list(User.objects.order_by("pk").values()) == before
    assert "all present" in out


def test_demo_users_keep_a_password_someone_changed():
    run("hxo_demo_users")
    user = User.objects.get(username="olivia")
    user.set_password("my-own-password")
    user.save()

    run("hxo_demo_users")

    assert User.objects.get(username="olivia").check_password("my-own-password")


# --- hxo_user changes only what it is asked to (issue 15) ------------------------------------


def test_hxo_user_token_alone_keeps_role_password_and_staff():
    run("hxo_user", "ci", "--role", "approver", "--password", "first-pass", "--staff")
    token_before = Token.objects.filter(user__username="ci").first()

    out, err = run("hxo_user", "ci", "--token")

    user = User.objects.get(username="ci")
    assert roles_of("ci") == ["approver"]
    assert user.check_password("first-pass")
    assert user.is_staff is True
    assert out.strip() == Token.objects.get(user=user).key
    assert token_before is None or token_before.key == out.strip()
    assert "with role approver" in err


def test_hxo_user_role_change_keeps_the_staff_flag_unless_asked():
    run("hxo_user", "sam", "--role", "operator", "--staff")

    run("hxo_user", "sam", "--role", "approver")
    assert User.objects.get(username="sam").is_staff is True

    run("hxo_user", "sam", "--no-staff")
    assert User.objects.get(username="sam").is_staff is False
    assert roles_of("sam") == ["approver"]


def test_hxo_user_new_user_needs_a_role():
    with pytest.raises(CommandError, match="give --role"):
        run("hxo_user", "nobody", "--token")
    assert not User.objects.filter(username="nobody").exists()


def test_an_admiral_stays_staff_even_with_no_staff():
    run("hxo_user", "ada", "--role", "admiral", "--no-staff")
    assert User.objects.get(username="ada").is_staff is True
