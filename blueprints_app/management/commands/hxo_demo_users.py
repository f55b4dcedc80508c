"""`manage.py hxo_demo_users`: the demo cast of blueprints_app.demo, one user per role.

Idempotent: existing users keep their password (a changed demo password stays changed) and get
their role group set again.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from blueprints_app.demo import DEMO_USERS, demo_logins
from blueprints_app.services import user_set_role


class Command(BaseCommand):
    help = "Create the demo users (admiral, operator, approver, viewer) with known passwords."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        existing = set(
            get_user_model()
            .objects.filter(username__in=DEMO_USERS)
            .values_list("username", flat=True)
        )
        created = []
        for username, (role, password) in DEMO_USERS.items():
            # Hashing a password is slow on purpose: only new users get one.
            user_set_role(
                username=username,
                role=role,
                password=None if username in existing else password,
            )
            if username not in existing:
                created.append(username)
        verb = f"created {', '.join(created)}" if created else "all present"
        self.stdout.write(f"Demo users: {verb}. Logins (user / password):")
        for line in demo_logins():
            self.stdout.write(f"  {line}")
