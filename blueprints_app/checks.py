"""The registry as loaded, checked: at start-up (a warning in the log) and by `manage.py check`.

A kind saved before its components declared their schemas, or whose component changed in a
deploy, may no longer be able to run (`blueprints_app.compat`). Saving refuses such a kind;
these catch the ones already stored. Both are warnings, not errors: an error would stop
`migrate` and `runserver`, and a migration or a registry edit may be the fix. CI can make them
fatal with `manage.py check --fail-level WARNING`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core import checks
from django.db import DatabaseError

logger = logging.getLogger("hxo.registry")

# The system check's id (`manage.py check` prints it; SILENCED_SYSTEM_CHECKS can name it).
CHECK_ID = "hxo.W001"


def _problems() -> list[str] | None:
    """The registry's problems, or None when the registry table cannot be read yet (a
    database not migrated; RuntimeError: a test that may not touch the database)."""
    from blueprints_app.compat import registry_problems

    try:
        return registry_problems()
    except (DatabaseError, RuntimeError):
        return None


def registry_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A Warning per job kind problem: an unregistered component, or a partitioner or
    executor that cannot serve the kind's schemas (the message names both and the field)."""
    return [
        checks.Warning(
            line,
            hint="Fix the kind in the admin or through the API (saving it shows every "
            "problem on its field), or restore the component it names.",
            obj="blueprints_app.JobKind",
            id=CHECK_ID,
        )
        for line in _problems() or []
    ]


def log_registry_problems(**kwargs: Any) -> list[str]:
    """Log each problem of the registry as a warning (logger `hxo.registry`); returns them.

    Connected to `request_started` and disconnected once it could read the registry, so a web
    process reports the registry it serves when it starts serving, without a database query
    during app initialisation.
    """
    from django.core.signals import request_started

    found = _problems()
    if found is None:
        return []  # not readable yet: try again at the next request
    request_started.disconnect(log_registry_problems, dispatch_uid=STARTUP_UID)
    for line in found:
        logger.warning("job kind cannot run: %s", line)
    return found


STARTUP_UID = "hxo-registry-startup-check"
