"""`manage.py hxo`: the same services as the API, non-zero exits with clear messages."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from runs_app import tasks
from runs_app.models import Plan, Run
from tests.runs_app.testkinds import stage

pytestmark = pytest.mark.django_db(transaction=True)


def hxo(*args: str) -> str:
    out = StringIO()
    call_command("hxo", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_submit_approve_apply_and_status(test_kinds, tmp_path: Path, operator, approver) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"name": "cli", "stages": [stage("a", tmp_path, items=2)]}))
    out = hxo("--user", operator.username, "submit", str(plan_file), "--dry-run")
    assert "run " in out
    dry = Run.objects.get()
    tasks.drain(dry.pk, budget_s=30)
    assert "approved" in hxo("--user", approver.username, "approve", str(dry.pk))
    plan = Plan.objects.get()
    out = hxo("--user", operator.username, "apply", str(plan.pk), "--dry-run-run", str(dry.pk))
    run = Run.objects.get(mode="apply")
    tasks.drain(run.pk, budget_s=30)
    status = hxo("--user", operator.username, "status", str(run.pk))
    assert "succeeded 2/2 done" in status


def test_refusals_exit_non_zero_with_the_code(test_kinds, tmp_path: Path, operator) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"name": "cli", "stages": [stage("a", tmp_path)]}))
    hxo("--user", operator.username, "submit", str(plan_file))
    plan = Plan.objects.get()
    err = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("hxo", "--user", operator.username, "apply", str(plan.pk), stderr=err)
    assert exited.value.code == 2
    assert "dry_run_required" in err.getvalue()


def test_bad_input_is_a_command_error(test_kinds, tmp_path: Path, operator) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        hxo("--user", operator.username, "submit", str(bad))
    with pytest.raises(CommandError, match="no active user"):
        hxo("--user", "ghost", "status", "1")
    with pytest.raises(CommandError, match="no run 999"):
        hxo("--user", operator.username, "status", "999")


@pytest.mark.parametrize("value", ["²", "٣", "abc", "0", str(2**63)])
def test_an_id_argument_goes_through_the_one_id_parser(operator, value: str) -> None:
    err = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("hxo", "--user", operator.username, "status", value, stderr=err)
    message = str(caught.value)
    assert "argument run" in message
    assert "not a whole number" in message or "out of range" in message


@pytest.mark.cluster
def test_submit_wait_follows_the_run_through_partitioning(
    test_kinds, tmp_path: Path, operator, settings
) -> None:
    from runs_app.models import RunState
    from tests.runs_app.cluster import running_cluster

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"name": "cli", "stages": [stage("a", tmp_path, items=3)]}))
    with running_cluster(WORKERS=2):
        out = hxo("--user", operator.username, "submit", str(plan_file), "--dry-run", "--wait")
    dry = Run.objects.get()
    assert dry.state == RunState.AWAITING_APPROVAL
    assert "partitioning" in out.splitlines()[1]  # the first status the request printed
    assert f"run {dry.pk} (dry_run) awaiting_approval" in out
    assert dry.partitions.count() == 3

    # A partitioning error ends the wait with the run's error and a non-zero exit.
    settings.HXO_MAX_PARTITIONS = 2
    with running_cluster(WORKERS=2), pytest.raises(SystemExit) as exited:
        call_command(
            "hxo",
            "--user",
            operator.username,
            "submit",
            str(plan_file),
            "--plan",
            str(Plan.objects.get().pk),
            "--dry-run",
            "--wait",
            stdout=(out2 := StringIO()),
            stderr=StringIO(),
        )
    assert exited.value.code == 3
    assert "error too_many_partitions" in out2.getvalue()


class Terminal(StringIO):
    """A stdout that says it is a terminal, as a user's shell is."""

    def isatty(self) -> bool:
        return True


def test_following_a_run_on_a_terminal_never_clears_the_screen(
    test_kinds, tmp_path: Path, operator
) -> None:
    """Issue 15 §5: progress on a terminal without screen clearing; the scrollback (and a
    `tee`d CI log) keeps every state the run went through."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"name": "cli", "stages": [stage("a", tmp_path, items=2)]}))
    hxo("--user", operator.username, "submit", str(plan_file), "--dry-run")
    dry = Run.objects.get()
    tasks.drain(dry.pk, budget_s=30)
    out = Terminal()

    call_command("hxo", "--user", operator.username, "status", str(dry.pk), "--wait", stdout=out)

    text = out.getvalue()
    assert "\x1b" not in text
    assert f"run {dry.pk} (dry_run) awaiting_approval" in text
    assert "█" in text  # bars on a terminal
