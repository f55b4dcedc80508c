"""`bin/hxo-run --clusters N` (what `make run-scaled` runs): the web server and N worker
clusters on one queue; a run submitted through the web is drained by them, and Ctrl-C drains
every cluster and leaves no process behind."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runs_app import services
from runs_app.models import ClaimLog, Run, RunState
from tests.blueprints_app.test_run_script import children_of, group_members
from tests.faults.harness import Deployment, free_port
from tests.runs_app.cluster import wait_for
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effect_files, stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


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
        deadline = time.monotonic() + 60
        while True:
            status, body = (0, None)
            with contextlib.suppress(OSError):  # not listening yet
                status, body = deployment.api(
                    "POST", f"/api/v1/plans/{plan.pk}/apply/", token=tokens["operator"], body={}
                )
            if status == 202:
                break
            assert run.poll() is None, run.communicate()[0]
            assert time.monotonic() < deadline, "the web server did not come up"
            time.sleep(0.2)
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
