"""The remote CLI (`hxo`) driving a live server and a real django-q2 cluster, as a CI job
would: the installed console script in a subprocess, with only HXO_URL and HXO_TOKEN.

Effects are counted in the files the test kinds write and in the database, not read from the
CLI's own words; the CLI's words are checked for what a CI log needs (ids, codes, paths).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
from pathlib import Path

import pytest
from django.urls import Resolver404, resolve

from runs_app.models import Approval, Plan, Run, RunMode, RunState
from tests.hxo_cli.conftest import cli_env
from tests.runs_app.cluster import running_cluster
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = [pytest.mark.django_db(transaction=True)]

# The digest is "pending" while a worker partitions the run; --wait prints it once known.
RUN_LINE = re.compile(r"^run (\d+) \((dry_run|apply)\) (\w+) digest ([0-9a-f]+|pending)", re.M)


def plan_file(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    return path


def started_run(stdout: str) -> int:
    m = RUN_LINE.search(stdout)
    assert m, stdout
    return int(m.group(1))


@pytest.mark.cluster
def test_a_ci_job_dry_runs_approves_applies_and_verifies_the_receipt(
    hxo, tokens, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = plan_file(tmp_path, {"name": "ci echo", "stages": [stage("echo", work, items=6)]})
    op, ap = tokens["operator"], tokens["approver"]

    with running_cluster(WORKERS=2):
        submitted = hxo("submit", path, "--dry-run", "--wait", token=op)
        assert submitted.returncode == 0, submitted
        plan = Plan.objects.get(name="ci echo")
        assert re.search(rf"^plan {plan.pk} revision 1 {plan.latest_revision.digest}$",
                         submitted.stdout, re.M), submitted.stdout  # fmt: skip
        dry_id = started_run(submitted.stdout)
        dry = Run.objects.get(pk=dry_id)
        assert dry.mode == RunMode.DRY_RUN and dry.state == RunState.AWAITING_APPROVAL
        # The final state once, not twice in a row.
        assert submitted.stdout.count(f"run {dry_id} (dry_run) awaiting_approval") == 1
        # Partitioned by a worker: the digest the approval binds is printed once known.
        assert f"run {dry_id} digest {dry.digest}" in submitted.stdout and dry.digest
        assert "echo succeeded 6/6 done, 0 failed, 0 running" in submitted.stdout
        assert effects(work, "echo") == []  # a dry-run changes nothing
        assert "\x1b" not in submitted.stdout  # not a terminal: plain lines only

        # The operator may not approve (four eyes and no hxo:approve): refused, exit 2.
        refused = hxo("approve", dry_id, token=op)
        assert refused.returncode == 2, refused
        assert refused.stderr.startswith("refused (permission_denied)"), refused.stderr
        assert not Approval.objects.filter(run=dry).exists()

        approved = hxo("approve", dry_id, "--comment", "looks right", token=ap)
        assert approved.returncode == 0, approved
        assert approved.stdout.strip() == f"run {dry_id} approved"
        assert Approval.objects.get(run=dry).comment == "looks right"

        applied = hxo("apply", plan.pk, "--dry-run-id", dry_id, "--wait", token=op)
        assert applied.returncode == 0, applied
        apply_id = started_run(applied.stdout)

    run = Run.objects.get(pk=apply_id)
    assert run.mode == RunMode.APPLY and run.dry_run_id == dry_id
    assert run.state == RunState.SUCCEEDED
    assert sorted(effects(work, "echo")) == list(range(6))
    assert f"merkle root {run.merkle_root}" in applied.stdout

    receipt = hxo("receipt", apply_id, token=tokens["viewer"])
    assert receipt.returncode == 0, receipt
    assert receipt.stdout.startswith(
        f"run {apply_id} receipt verified merkle root {run.merkle_root}"
    )
    assert re.search(r"^  echo root [0-9a-f]+ \(6 leaves\)$", receipt.stdout, re.M), receipt.stdout

    status = hxo("status", apply_id, "--json", token=tokens["viewer"])
    assert status.returncode == 0, status
    data = json.loads(status.stdout)
    assert data["state"] == "succeeded" and data["stages"][0]["counts"]["succeeded"] == 6

    listed = hxo("list", "runs", "--plan", plan.pk, token=tokens["viewer"])
    assert listed.returncode == 0, listed
    assert {int(x) for x in re.findall(r"^run (\d+) ", listed.stdout, re.M)} == {dry_id, apply_id}
    plans = hxo("list", "plans", "--json", token=tokens["viewer"])
    assert [json.loads(line)["id"] for line in plans.stdout.splitlines()] == [plan.pk]


@pytest.mark.cluster
def test_a_failed_run_exits_3_its_logs_name_the_error_and_a_replay_heals_it(
    hxo, tokens, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # Non-idempotent (the admiral may force-merge it): the injected failure fails the
    # partition at once, without retries, and only on its first try.
    doc = {
        "name": "ci fails once",
        "stages": [
            stage(
                "load",
                work,
                items=4,
                kind=TEST_KIND_NOAPPROVAL,
                executor="test_append_once",
                fail={"2": 1},
            )
        ],
    }
    op = tokens["admiral"]
    with running_cluster(WORKERS=2):
        submitted = hxo("submit", plan_file(tmp_path, doc), "--apply", "--wait", token=op)
        assert submitted.returncode == 3, submitted
        run_id = started_run(submitted.stdout)
        assert Run.objects.get(pk=run_id).state == RunState.FAILED
        assert f"run {run_id} (apply) failed" in submitted.stdout
        assert "injected failure of item 2" in submitted.stdout  # the stage's first error

        status = hxo("status", run_id, token=op)
        assert status.returncode == 3, status

        logs = hxo("logs", run_id, "--state", "failed", token=op)
        assert logs.returncode == 0, logs
        assert re.search(r"^load#2 failed attempts 1 ", logs.stdout, re.M), logs.stdout
        assert "injected failure of item 2, try 1" in logs.stdout
        assert "load#0" not in logs.stdout  # only the failed ones were asked for

        one = hxo("logs", run_id, "--stage", "load", "--partition", 2, token=op)
        assert one.returncode == 0, one
        assert one.stdout.startswith("load#2 failed"), one.stdout
        # Its log, from the server's per-partition log endpoint: the error's traceback.
        assert "no per-partition logs" not in one.stdout
        assert re.search(r"^  log: \d+ lines", one.stdout, re.M), one.stdout
        assert "--- attempt 1 ---" in one.stdout
        assert re.search(r"^  \| .*RuntimeError: injected failure of item 2", one.stdout, re.M)

        # Aborting a finished run is refused by the server: exit 2 with its code.
        aborted = hxo("abort", run_id, token=op)
        assert aborted.returncode == 2, aborted
        assert aborted.stderr.startswith("refused ("), aborted.stderr

        replayed = hxo("replay", run_id, "--wait", token=op)
        assert replayed.returncode == 0, replayed
        assert f"(replay of run {run_id})" in replayed.stdout
        child = Run.objects.get(parent_id=run_id)
        assert child.state == RunState.SUCCEEDED
    # Each item applied exactly once: 0, 1, 3 by the run, 2 by its replay.
    assert sorted(effects(work, "load")) == [0, 1, 2, 3]


def test_refusals_and_mistakes_exit_non_zero_with_a_clear_message(
    hxo, tokens, tmp_path: Path, live_server
) -> None:
    op = tokens["operator"]
    bad = plan_file(
        tmp_path,
        {"name": "bad", "stages": [{**stage("s", tmp_path), "partitioner": "no_such"}]},
    )
    invalid = hxo("submit", bad, "--dry-run", token=op)
    assert invalid.returncode == 2, invalid
    assert invalid.stderr.startswith("refused ("), invalid.stderr
    assert re.search(r"^  stages\[0\]\.partitioner: \w+: ", invalid.stderr, re.M), invalid.stderr
    assert not Plan.objects.exists()  # nothing stored

    missing = hxo("submit", tmp_path / "nope.json", token=op)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"{tmp_path}/nope.json: no such file",
    )
    (tmp_path / "broken.json").write_text("{not json")
    broken = hxo("submit", tmp_path / "broken.json", token=op)
    assert broken.returncode == 1 and "not valid JSON" in broken.stderr, broken

    no_run = hxo("status", 987654, token=op)
    assert (no_run.returncode, no_run.stderr.strip()) == (1, "no run 987654")
    no_plan = hxo("apply", 987654, token=op)
    assert (no_plan.returncode, no_plan.stderr.strip()) == (1, "no plan 987654")

    wrong_token = hxo("list", token="0" * 40)
    assert wrong_token.returncode == 1 and "HXO_TOKEN" in wrong_token.stderr, wrong_token

    usage = hxo("status", "not-an-id", token=op)
    assert usage.returncode == 2 and "not an id" in usage.stderr, usage

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nobody_home = hxo("list", token=op, url=f"http://127.0.0.1:{port}")
    assert nobody_home.returncode == 1 and "cannot reach" in nobody_home.stderr, nobody_home

    no_url = hxo("list", token=op, url="ftp://example.org")
    assert no_url.returncode == 1 and "not an http(s) URL" in no_url.stderr, no_url

    # A URL that is not an HXO server's root (HTML 404 pages): said plainly, exit 1.
    not_api = hxo("list", token=op, url=f"{live_server.url}/nowhere")
    assert not_api.returncode == 1, not_api
    assert not_api.stderr.startswith("error (http_404): HTTP 404"), not_api.stderr


def test_pause_and_resume_say_so_when_the_server_has_no_such_endpoint(
    hxo, tokens, operator, tmp_path: Path
) -> None:
    from runs_app import services

    plan = services.plan_create(
        actor=operator, document={"name": "p", "stages": [stage("s", tmp_path, items=1)]}
    )
    run = services.run_start_dry_run(plan=plan, actor=operator)
    for action in ("pause", "resume"):
        result = hxo(action, run.pk, token=tokens["operator"])
        try:
            resolve(f"/api/v1/runs/{run.pk}/{action}/")
        except Resolver404:
            assert result.returncode == 1, result
            assert f"this server does not offer `{action}`" in result.stderr, result.stderr
        else:  # once the endpoint exists, the CLI reports its answer, never a traceback
            assert result.returncode in (0, 2), result
            assert "Traceback" not in result.stderr


def test_a_terminal_gets_bars_drawn_in_place_never_a_cleared_screen(
    hxo_install: Path, live_server, tokens, operator, tmp_path: Path
) -> None:
    from runs_app import services
    from tests.helpers import drain

    plan = services.plan_create(
        actor=operator, document={"name": "tty", "stages": [stage("bars", tmp_path, items=3)]}
    )
    run = drain(services.run_start_dry_run(plan=plan, actor=operator))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(hxo_install / "bin" / "hxo"), "status", str(run.pk), "--wait"],
        cwd=tmp_path,
        env=cli_env(hxo_install, HXO_URL=live_server.url, HXO_TOKEN=tokens["operator"]),
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, output
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the pty's other end closed: the process has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = output.decode()
    assert "\x1b[2J" not in text  # no screen clearing
    assert "bars" in text and "100%" in text and "━" in text  # rich's bar
    assert f"run {run.pk} (dry_run) awaiting_approval" in text


def test_pause_and_resume_a_running_run_from_ci_and_refusals_exit_2(
    hxo, tokens, operator, tmp_path: Path
) -> None:
    from hxo_site.models import AuditEvent
    from runs_app import services
    from runs_app.engine import claims
    from tests.helpers import drain, partitioned

    plan = services.plan_create(
        actor=operator,
        document={
            "name": "p",
            "stages": [stage("s", tmp_path, items=3, kind=TEST_KIND_NOAPPROVAL)],
        },
    )
    run = partitioned(services.run_apply(plan=plan, actor=operator))
    op = tokens["operator"]
    paused = hxo("pause", run.pk, token=op)
    assert (paused.returncode, paused.stdout.strip()) == (0, f"run {run.pk} paused"), paused
    run.refresh_from_db()
    assert run.is_paused and claims.claim_batch(run.pk, "w", 3) == []
    again = hxo("pause", run.pk, token=op)
    assert again.returncode == 2 and again.stderr.startswith("refused (already_paused)"), again
    viewer = hxo("resume", run.pk, token=tokens["viewer"])
    assert viewer.returncode == 2 and "permission_denied" in viewer.stderr, viewer
    resumed = hxo("resume", run.pk, token=op)
    assert (resumed.returncode, resumed.stdout.strip()) == (0, f"run {run.pk} running"), resumed
    run = drain(run)
    assert sorted(effects(tmp_path, "s")) == [0, 1, 2]
    finished = hxo("pause", run.pk, token=op)
    assert finished.returncode == 2 and finished.stderr.startswith("refused (invalid_state)")
    actions = AuditEvent.objects.filter(
        object_id=str(run.pk), action__in=["run.pause", "run.resume"]
    )
    assert sorted(actions.values_list("action", flat=True)) == ["run.pause", "run.resume"]
