"""`manage.py hxo`: submit plans, approve dry-runs, apply, and follow runs from a terminal.

Every subcommand acts as a named user (--user, default $HXO_USER) through the same services
as the API, so capabilities and refusal codes are the same; a refusal exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from hxo_site import parameters
from hxo_site.errors import ServiceError
from runs_app import selectors, services
from runs_app.models import PAUSED, Plan, Run, RunState
from runs_app.models.engine import RUN_UNSUCCESSFUL


def object_id(text: str) -> int:
    """An id argument through the one id parser (ASCII digits, within the id column)."""
    try:
        return parameters.parse_id(text, name="id")
    except parameters.ParameterError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _concurrency(text: str) -> int | str:
    """--concurrency: a number, or `default` (HXO_MAX_CONCURRENCY)."""
    if text == "default":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number, or 'default'") from None


EXIT_REFUSED = 2
EXIT_RUN_FAILED = 3


class Command(BaseCommand):
    help = "Submit plans, approve dry-runs, apply and follow runs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default=os.environ.get("HXO_USER"), help="act as this user")
        sub = parser.add_subparsers(dest="action", required=True)
        submit = sub.add_parser("submit", help="create or update a plan from a JSON file, run it")
        submit.add_argument("plan_file")
        submit.add_argument(
            "--plan", type=object_id, help="update this plan instead of creating one"
        )
        submit.add_argument("--dry-run", action="store_true", help="start a dry-run")
        submit.add_argument("--apply", action="store_true", help="apply (kinds without dry-run)")
        submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
        approve = sub.add_parser("approve", help="approve a dry-run")
        approve.add_argument("run", type=object_id)
        approve.add_argument("--comment", default="")
        reject = sub.add_parser("reject", help="reject a dry-run")
        reject.add_argument("run", type=object_id)
        reject.add_argument("--comment", default="")
        apply = sub.add_parser("apply", help="apply a plan")
        apply.add_argument("plan", type=object_id)
        apply.add_argument("--dry-run-run", type=object_id, help="the approved dry-run")
        apply.add_argument("--force-rerun", action="store_true")
        apply.add_argument("--wait", action="store_true")
        status = sub.add_parser("status", help="show a run's progress")
        status.add_argument("run", type=object_id)
        status.add_argument("--wait", action="store_true")
        status.add_argument("--json", action="store_true", help="print the run as JSON")
        abort = sub.add_parser("abort", help="abort a run")
        abort.add_argument("run", type=object_id)
        pause = sub.add_parser("pause", help="pause a run (running partitions finish)")
        pause.add_argument("run", type=object_id)
        resume = sub.add_parser("resume", help="resume a paused run")
        resume.add_argument("run", type=object_id)
        throttle = sub.add_parser("throttle", help="change a run's concurrency or interval")
        throttle.add_argument("run", type=object_id)
        throttle.add_argument(
            "--concurrency", type=_concurrency, help="drainers at once, or 'default'"
        )
        throttle.add_argument(
            "--min-interval-ms", type=int, help="least milliseconds between two partitions"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        self.actor = self._user(opts["user"])
        try:
            getattr(self, f"do_{opts['action']}")(opts)
        except ServiceError as exc:
            self.stderr.write(f"refused ({exc.code}): {exc.message}")
            for err in exc.errors:
                self.stderr.write(f"  {err.get('path')}: {err.get('code')}: {err.get('message')}")
            if "diff" in exc.extra:
                self.stderr.write(json.dumps(exc.extra["diff"], indent=2, default=str))
            sys.exit(EXIT_REFUSED)

    def _user(self, name: str | None) -> Any:
        if not name:
            raise CommandError("name the acting user with --user NAME (or set HXO_USER)")
        user = get_user_model().objects.filter(username=name, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {name!r}")
        return user

    def _run(self, run_id: int) -> Run:
        run = Run.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"no run {run_id}")
        return run

    def do_submit(self, opts: dict[str, Any]) -> None:
        path = Path(opts["plan_file"])
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise CommandError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path}: not valid JSON: {exc}") from None
        if opts["plan"]:
            plan = Plan.objects.filter(pk=opts["plan"]).first()
            if plan is None:
                raise CommandError(f"no plan {opts['plan']}")
        # One transaction: when the run is refused (a file the partitioner refuses, a kind
        # that needs a dry-run...), the plan or revision written for it is not left behind.
        with transaction.atomic():
            if opts["plan"]:
                revision = services.plan_update(plan=plan, actor=self.actor, document=document)
                wrote = f"plan {plan.pk} revision {revision.number} {revision.digest}"
            else:
                plan = services.plan_create(actor=self.actor, document=document)
                wrote = f"plan {plan.pk} revision 1 {plan.latest_revision.digest}"
            run = None
            if opts["dry_run"]:
                run = services.run_start_dry_run(plan=plan, actor=self.actor)
            elif opts["apply"]:
                run = services.run_apply(plan=plan, actor=self.actor)
        self.stdout.write(wrote)
        if run is None:
            return
        self.stdout.write(f"run {run.pk} ({run.mode}) {run.state} digest {run.digest}")
        if opts["wait"]:
            self._follow(run)

    def do_approve(self, opts: dict[str, Any]) -> None:
        run = services.run_approve(
            run=self._run(opts["run"]), actor=self.actor, comment=opts["comment"]
        )
        self.stdout.write(f"run {run.pk} {run.state}")

    def do_reject(self, opts: dict[str, Any]) -> None:
        run = services.run_reject(
            run=self._run(opts["run"]), actor=self.actor, comment=opts["comment"]
        )
        self.stdout.write(f"run {run.pk} {run.state}")

    def do_apply(self, opts: dict[str, Any]) -> None:
        plan = Plan.objects.filter(pk=opts["plan"]).first()
        if plan is None:
            raise CommandError(f"no plan {opts['plan']}")
        run = services.run_apply(
            plan=plan,
            actor=self.actor,
            dry_run_id=opts["dry_run_run"],
            force_rerun=opts["force_rerun"],
        )
        self.stdout.write(f"run {run.pk} ({run.mode}) {run.state} digest {run.digest}")
        if opts["wait"]:
            self._follow(run)

    def do_abort(self, opts: dict[str, Any]) -> None:
        run = services.run_abort(run=self._run(opts["run"]), actor=self.actor)
        self.stdout.write(f"run {run.pk} {run.state}")

    def do_pause(self, opts: dict[str, Any]) -> None:
        run = services.run_pause(run=self._run(opts["run"]), actor=self.actor)
        self.stdout.write(f"run {run.pk} {_shown(run)}")

    def do_resume(self, opts: dict[str, Any]) -> None:
        run = services.run_resume(run=self._run(opts["run"]), actor=self.actor)
        self.stdout.write(f"run {run.pk} {_shown(run)} resumed")

    def do_throttle(self, opts: dict[str, Any]) -> None:
        given: dict[str, Any] = {}
        if opts["concurrency"] is not None:
            given["concurrency"] = None if opts["concurrency"] == "default" else opts["concurrency"]
        if opts["min_interval_ms"] is not None:
            given["min_interval_ms"] = opts["min_interval_ms"]
        run = services.run_throttle(run=self._run(opts["run"]), actor=self.actor, **given)
        self.stdout.write(
            f"run {run.pk} concurrency {run.max_concurrency or 'default'}"
            f" min_interval_ms {run.min_interval_ms}"
        )

    def do_status(self, opts: dict[str, Any]) -> None:
        run = self._run(opts["run"])
        if opts["json"]:
            from runs_app.serializers import RunSerializer

            data = RunSerializer(selectors.run_with_stages(run.pk)).data
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return
        if opts["wait"]:
            self._follow(run)
        else:
            self._print_status(run, tty=False)
            if run.state == RunState.FAILED:
                sys.exit(EXIT_RUN_FAILED)

    def _follow(self, run: Run) -> None:
        tty = self.stdout.isatty()
        shown = None
        while True:
            run = selectors.run_with_stages(run.pk)
            # Printed again only when it changed: the terminal's scrollback is never cleared
            # (a CI log or a `tee` keeps every state the run went through).
            shown = self._print_status(run, tty=tty, unless=shown)
            if run.is_finished:
                break
            time.sleep(1)  # a terminal's refresh interval, not a test wait
        if run.state in RUN_UNSUCCESSFUL:
            sys.exit(EXIT_RUN_FAILED)

    def _print_status(self, run: Run, *, tty: bool, unless: str | None = None) -> str:
        """Write the run's status (bars on a terminal, plain counts otherwise) unless it is
        `unless`, the text written last; returns the text."""
        lines = [f"run {run.pk} ({run.mode}) {_shown(run)}"]
        for stage in run.run_stages.all():
            p = selectors.stage_progress(stage)
            c = p["counts"]
            done = c["succeeded"] + c["reused"]
            if tty:
                width = 30
                filled = int(width * p["percent"] / 100)
                bar = "█" * filled + "·" * (width - filled)
                lines.append(f"  {p['id']:<20} {bar} {p['percent']:3d}% {p['state']}")
            else:
                lines.append(
                    f"  {p['id']} {p['state']} {done}/{c['total']} done, "
                    f"{c['failed']} failed, {c['running']} running"
                )
        partitioning = selectors.partitioning_progress(run, run.run_stages.all())
        if partitioning is not None:
            total = partitioning["total"]
            lines.append(
                "  partitioning: resolving the manifest"
                if total is None
                else f"  partitioning: {partitioning['written']}/{total} partitions written"
            )
        if run.error:
            lines.append(f"  error {run.error.get('code')}: {run.error.get('message')}")
        if run.merkle_root:
            lines.append(f"  merkle root {run.merkle_root}")
        text = "\n".join(lines)
        if text != unless:
            self.stdout.write(text)
        return text


def _shown(run: Run) -> str:
    """The run's public state (`paused` for a paused running run), and ` paused` after a
    state that a pause does not rename (a run paused while pending or partitioning)."""
    state = run.public_state
    return f"{state} paused" if run.is_paused and state != PAUSED else state
