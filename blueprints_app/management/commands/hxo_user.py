"""`manage.py hxo_user NAME [--role ROLE] [--password P] [--token] [--staff | --no-staff]`.

Creates a user holding exactly one role group (`--role` required then), or updates an existing
one, changing only what the options ask for: `hxo_user ci --token` prints the token and leaves
the role, password and staff flag alone. With `--token`, stdout carries only the user's API
token (created once, then reused), for scripts: `TOKEN=$(manage.py hxo_user ci --role operator
--token)`.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from blueprints_app.services import user_set_role
from hxo_site.authentication import token_for
from hxo_site.capabilities import ROLES


class Command(BaseCommand):
    help = "Create or update a user with one role; --token prints only its API token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="username")
        parser.add_argument(
            "--role",
            help=f"one of: {', '.join(ROLES)} (required for a new user; default: keep)",
        )
        parser.add_argument("--password", help="set this password (default: keep; new: none)")
        parser.add_argument(
            "--token", action="store_true", help="print only the API token on stdout"
        )
        parser.add_argument(
            "--staff",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="may log in to the admin (admirals always may; default: keep, new: no)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        role = options["role"]
        if role is not None and role not in ROLES:
            raise CommandError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        try:
            user, created = user_set_role(
                username=options["name"],
                role=role,
                password=options["password"],
                staff=options["staff"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        role = role or next((r for r in ROLES if user.groups.filter(name=r).exists()), "none")
        summary = f"{'Created' if created else 'Updated'} user {user.username!r} with role {role}"
        if options["token"]:
            # An expired token is replaced: printing a key the API refuses helps nobody.
            token = token_for(user)
            self.stderr.write(summary)
            self.stdout.write(token.key)
        else:
            self.stdout.write(summary)
