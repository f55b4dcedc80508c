"""Built-in partitioners and executors of the contract's six job kinds.

Importing this package registers them (see blueprints_app.registry.autodiscover).
"""

from __future__ import annotations

from runs_app.kinds import placeholders  # noqa: F401
