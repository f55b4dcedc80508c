"""Built-in partitioners and executors of the contract's six job kinds.

Importing this package registers them (see blueprints_app.registry.autodiscover). One module
per family: pack (deploy.pack, plus by_filesize and by_module which other kinds share), migrate
(deploy.migrate), prime (deploy.prime), assets (assets.index, assets.stage), docs (docs.index).
"""

from __future__ import annotations

from runs_app.kinds import assets, docs, migrate, pack, prime  # noqa: F401
