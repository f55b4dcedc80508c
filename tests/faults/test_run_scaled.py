"""`bin/hxo-run --clusters N` (what `make run-scaled` runs): the web server and N worker
clusters on one queue; a run submitted through the web is drained by them, and Ctrl-C drains
every cluster and leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from runs_app import services
from runs_app.models import ClaimLog, Run, RunState
from tests.blueprints_app.test_run_script import children_of, group_members
from tests.faults.harness import Deployment, free_port
from tests.runs_app.cluster import wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def apply_once_serving(
    deployment: Deployment, plan: Any, tokens: dict[str, str], run: Any, output: Any
) -> dict[str, Any]:
    """POST the plan's apply until the server `run` started answers 202 (polled with a 60 s
    deadline); the run it returns. `output()` gives the server's output for a failure."""
    deadline = time.monotonic() + 60
    while True:
        status, body = (0, None)
        with contextlib.suppress(OSError):  # not listening yet
            status, body = deployment.api(
                "POST", f"/api/v1/plans/{plan.pk}/apply/", token=tokens["operator"], body={}
            )
        if status == 202:
            return body
        assert run.poll() is None, output()
        assert time.monotonic() < deadline, "the web server did not come up"
        time.sleep(0.2)  # polling a port with a deadline, not waiting for work


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process table from /proc")
def test_hxo_run_starts_n_clusters_on_one_queue_that_drain_on_ctrl_c(
    deployment: Deployment, tokens, operator, tmp_path: Path
) -> None:
    effects_dir = tmp_path / "effects"
    effects_dir.mkdir()
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "shared",
            "stages": [stage("a", effects_dir, items=40, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    port = free_port()
    deployment.web_url = f"http://127.0.0.1:{port}"
    run = subprocess.Popen(
        [sys.executable, "bin/hxo-run", "--clusters", "3", f"127.0.0.1:{port}"],
        cwd=Path(__file__).resolve().parents[2],
        env={**deployment.env, "DEBUG": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = apply_once_serving(deployment, plan, tokens, run, lambda: run.communicate()[0])
        wait_for(lambda: Run.objects.get(pk=body["id"]).is_finished, "the run")
        children = children_of(run.pid)
        assert len(children) == 4  # runserver and three qcluster main processes

        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()

    assert run.returncode == 0, output
    assert Run.objects.get(pk=body["id"]).state == RunState.SUCCEEDED
    assert effect_files(effects_dir, "a") == list(range(40))
    assert output.count("has stopped") == 3  # each cluster drained and stopped cleanly
    assert "Worker clusters: 3" in output
    assert group_members(children) == []
    assert ClaimLog.objects.filter(partition__run_id=body["id"]).count() == 40


def _load(base_url: str, paths: list[str], token: str, clients: int, rounds: int) -> Counter:
    """`clients` threads each GET every path `rounds` times; a Counter of status codes (0 for a
    connection error)."""

    def client(_: int) -> Counter:
        seen: Counter = Counter()
        for _ in range(rounds):
            for path in paths:
                request = urllib.request.Request(
                    base_url + path, headers={"Authorization": f"Token {token}"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        response.read()
                        seen[response.status] += 1
                except urllib.error.HTTPError as exc:
                    seen[exc.code] += 1
                except OSError:
                    seen[0] += 1
        return seen

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)), Counter())


def test_run_scaled_web_server_serves_20_clients_without_a_5xx(
    deployment: Deployment, tokens, operator, tmp_path: Path
) -> None:
    """Issue 15: under runserver with persistent connections, 20 clients took PostgreSQL to ~99
    of 100 connections and 252 of 2,277 requests got a 500. `make run-scaled` now serves with
    gunicorn (`--web gunicorn`): its sync workers hold one connection each."""
    effects_dir = tmp_path / "effects"
    effects_dir.mkdir()
    plan = services.plan_create(
        actor=operator,
        document={
            "name": "loaded",
            "stages": [stage("a", effects_dir, items=20, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    port = free_port()
    deployment.web_url = f"http://127.0.0.1:{port}"
    run = subprocess.Popen(
        [
            sys.executable,
            "bin/hxo-run",
            "--clusters",
            "2",
            "--web",
            "gunicorn",
            f"127.0.0.1:{port}",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**deployment.env, "DEBUG": "1", "HXO_WEB_WORKERS": "4"},
        # A file, not a pipe nobody reads while loading: gunicorn's access log would fill it.
        stdout=(tmp_path / "hxo-run.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        log = tmp_path / "hxo-run.log"
        run_id = apply_once_serving(deployment, plan, tokens, run, log.read_text)["id"]
        paths = [
            f"/runs/{run_id}/",
            f"/api/v1/runs/{run_id}/",
            "/api/v1/runs/",
            "/plans/",
            "/static/css/hxo.css",
        ]
        statuses = _load(deployment.web_url, paths, tokens["operator"], clients=20, rounds=6)
        connections = None
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                )
                connections = cursor.fetchone()[0]
        wait_for(lambda: Run.objects.get(pk=run_id).is_finished, "the run")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
            try:
                run.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)

    assert sum(statuses.values()) == 20 * 6 * len(paths)
    assert statuses == Counter({200: 20 * 6 * len(paths)}), statuses
    assert Run.objects.get(pk=run_id).state == RunState.SUCCEEDED
    assert effect_files(effects_dir, "a") == list(range(20))
    if connections is not None:
        # 4 gunicorn workers + 2 clusters' workers, monitors and this test: far from 100.
        assert connections <= 20, connections
