"""`python -m hxo_cli`: the same as the `hxo` console script."""

from __future__ import annotations

import sys

from hxo_cli.main import main

sys.exit(main())
