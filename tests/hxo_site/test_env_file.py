"""The development `.env` (issue 15, "First contact"): `make setup` writes DEBUG=1 and a random
SECRET_KEY once, settings read it through python-dotenv, so every `manage.py` command in a fresh
shell works and shares the workers' key; a worker that cannot verify a task says why."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django_q.conf import Conf
from django_q.tasks import async_task

from tests.runs_app.cluster import running_cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
PRINT_KEY = "from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"


def fresh_shell_env(**extra: str) -> dict[str, str]:
    """The environment of a new shell: none of the variables the test session sets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SECRET_KEY", "DEBUG", "HXO_ENV_FILE", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_dotenv_file_gives_a_fresh_shell_debug_and_the_key(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DEBUG=1\nSECRET_KEY=from-the-dotenv-file\n")

    done = manage(
        "shell", "-v", "0", "-c", PRINT_KEY, env=fresh_shell_env(HXO_ENV_FILE=str(env_file))
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "from-the-dotenv-file"]


def test_the_process_environment_wins_over_the_dotenv_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DEBUG=1\nSECRET_KEY=from-the-dotenv-file\n")

    done = manage(
        "shell",
        "-v",
        "0",
        "-c",
        PRINT_KEY,
        env=fresh_shell_env(HXO_ENV_FILE=str(env_file), SECRET_KEY="from-the-host", DEBUG="0"),
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "from-the-host"]


def test_without_a_key_the_error_says_how_to_fix_it(tmp_path: Path) -> None:
    done = manage("check", env=fresh_shell_env(HXO_ENV_FILE=str(tmp_path / "absent.env")))

    assert done.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in done.stderr
    assert "make setup" in done.stderr
    assert "secrets.token_urlsafe" in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_writes_the_dotenv_once_and_never_overwrites_it(tmp_path: Path) -> None:
    target = tmp_path / ".env"

    def make_env() -> None:
        subprocess.run(
            ["make", "-s", "-f", str(ROOT / "Makefile"), f"PY={sys.executable}", ".env"],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            timeout=60,
        )

    make_env()
    first = target.read_text()
    make_env()

    assert target.read_text() == first
    values = dict(
        line.split("=", 1) for line in first.splitlines() if line and not line.startswith("#")
    )
    assert values["DEBUG"] == "1"
    assert len(values["SECRET_KEY"]) >= 50
    assert target.stat().st_mode & 0o077 == 0  # a secret: readable by its owner only


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_worker_names_secret_key_for_a_task_it_cannot_verify(tmp_path: Path, settings) -> None:
    from django_q.models import OrmQ

    if settings.Q_CLUSTER.get("orm") is None:
        pytest.skip("counts rows of the ORM broker's queue")
    # django-q2 reads the key once, at import (Conf.SECRET_KEY): as in a CLI started with
    # another SECRET_KEY, the task is signed with a key the cluster does not have.
    with mock.patch.object(Conf, "SECRET_KEY", "another-processes-key"):
        async_task("math.floor", 1.5)
    assert OrmQ.objects.count() == 1

    # The forked workers inherit this handler: what they log lands in the file.
    log_file = tmp_path / "worker.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("django-q")
    logger.addHandler(handler)
    try:
        with running_cluster(WORKERS=1):
            wait_for(lambda: OrmQ.objects.count() == 0, "the worker to drop the unverifiable task")
    finally:
        logger.removeHandler(handler)
        handler.close()

    err = log_file.read_text()
    assert "cannot verify" in err
    assert "SECRET_KEY" in err and settings.Q_CLUSTER["name"] in err
    assert "Traceback" not in err
