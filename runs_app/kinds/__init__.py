"""Built-in partitioners and executors of the contract's six job kinds.

Importing this package registers them (each class carries the registry's decorator, as a
plugin's do). One module per family: pack (deploy.pack, plus by_filesize and by_module which
other kinds share), migrate (deploy.migrate), prime (deploy.prime), assets (assets.index,
assets.stage), docs (docs.index). What they share: base (params, error codes, atomic
publishing, effects), workspace (the base of the partitioners over a workspace directory),
files (pinning and reading workspace files), pygraph (Python import graphs).
"""

from __future__ import annotations

from runs_app.kinds import assets, docs, migrate, pack, prime  # noqa: F401
