"""The cluster's workers fork with the URLconf already imported (runs_app.tasks.preload):
a run's last completion reverses the run's URL for its notification, and without the
preload every worker process imported every view on its first run (bench/profiles/engine.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Set up Django as `manage.py <command>` would, and print whether the URLconf got imported.
PROBE = """
import os, sys
sys.argv = ["manage.py", sys.argv[1]]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hxo_site.settings")
import django
django.setup()
print("hxo_site.urls" in sys.modules)
"""


def _urlconf_loaded_at_setup(command: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip().splitlines()[-1] == "True"


def test_qcluster_process_imports_the_urlconf_before_it_forks_workers() -> None:
    assert _urlconf_loaded_at_setup("qcluster")


def test_other_commands_do_not_pay_for_the_preload() -> None:
    assert not _urlconf_loaded_at_setup("check")


def test_preload_builds_the_reverse_map_the_notifications_use() -> None:
    from django.urls import get_resolver

    from runs_app.notifications import run_url
    from runs_app.tasks import preload

    preload()
    assert get_resolver()._populated
    assert run_url(7).endswith("/runs/7/")
