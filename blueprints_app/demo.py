"""The demo cast created by `make setup` (`manage.py hxo_demo_users`), one user per role.

Plain data, importable without Django (bin/hxo-run prints these logins). Demo passwords are
for a local machine only; `make setup` never resets a password someone changed.
"""

from __future__ import annotations

# username → (role, password)
DEMO_USERS: dict[str, tuple[str, str]] = {
    "admiral": ("admiral", "admiral-demo"),
    "olivia": ("operator", "olivia-demo"),
    "aaron": ("approver", "aaron-demo"),
    "victor": ("viewer", "victor-demo"),
}


def demo_logins() -> list[str]:
    return [f"{user:<8} / {password:<13} ({role})" for user, (role, password) in DEMO_USERS.items()]
