"""The `hxo` command: submit, approve, apply and follow runs through the REST API v1.

Exit codes are those of the server's `manage.py hxo` (and one more that only a remote client
can meet):

- 0: done (a waited-for run succeeded, or a dry-run awaits approval).
- 1: could not do it: no such plan or run, an unreadable plan file, no URL or token, a token
  the server does not know, the server unreachable or answering 5xx, an endpoint this server
  does not offer.
- 2: refused by the server (a 4xx with a code: an invalid plan, a missing capability, the
  wrong state, an idempotency key reused...), or a usage error.
- 3: the run ended unsuccessfully (failed, aborted, rejected); a receipt that does not verify.
- 4: `--wait` gave up after `--wait-timeout` seconds, the run still going (remote only).
- 130: interrupted (Ctrl-C); the run goes on on the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from hxo_cli.client import DEFAULT_HTTP_TIMEOUT_S, Api, ApiFailure, normalise_base_url
from hxo_cli.progress import Follower, run_line, status_lines

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2
EXIT_RUN_FAILED = 3
EXIT_WAIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

# Run states that end a wait: the run has finished executing (a dry-run awaiting approval
# included). Every other state, one this client does not know too (`partitioning`, `paused`,
# a later one), is waited through.
FINISHED = frozenset(
    {"succeeded", "failed", "aborted", "awaiting_approval", "approved", "rejected"}
)
# Ended without the change asked for: exit 3 after a wait.
UNSUCCESSFUL = frozenset({"failed", "aborted", "rejected"})
# How long a wait rides out a server that does not answer (a restart, a 502 from a proxy).
TRANSIENT_GRACE_S = 60.0


class Exit(Exception):
    """Leave with `code` after printing `message` (to stderr) when there is one."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def positive_id(text: str) -> int:
    """An id argument: ASCII digits, 1 or more (what the API's ids are)."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 18:
        raise argparse.ArgumentTypeError(f"{text!r} is not an id (a positive whole number)")
    return int(text)


def non_negative_seconds(text: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hxo` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="hxo",
        description="Drive an HXO server through its REST API v1 (for CI jobs and remote use).",
        epilog="Exit codes: 0 done, 1 could not do it, 2 refused by the server, "
        "3 run ended unsuccessfully, 4 --wait timed out.",
    )
    parser.add_argument(
        "--url", default=os.environ.get("HXO_URL"), help="the server's URL (default $HXO_URL)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("HXO_TOKEN"),
        help="an API token (default $HXO_TOKEN; `manage.py hxo_user NAME --token` makes one)",
    )
    parser.add_argument(
        "--http-timeout",
        type=non_negative_seconds,
        default=DEFAULT_HTTP_TIMEOUT_S,
        help="seconds to wait for one answer (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true", help="follow the run until it ends")
        p.add_argument(
            "--wait-timeout",
            type=non_negative_seconds,
            default=None,
            help="give up waiting after this many seconds (exit 4; the run goes on)",
        )
        p.add_argument(
            "--interval",
            type=non_negative_seconds,
            default=1.0,
            help="seconds between two looks at the run while waiting (default 1)",
        )

    def idempotent(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--idempotency-key",
            help="the same key returns the same run (a retried CI step starts nothing twice)",
        )

    submit = sub.add_parser("submit", help="create or update a plan from a JSON file, run it")
    submit.add_argument("plan_file")
    submit.add_argument("--plan", type=positive_id, help="update this plan instead of creating")
    start = submit.add_mutually_exclusive_group()
    start.add_argument("--dry-run", action="store_true", help="start a dry-run")
    start.add_argument("--apply", action="store_true", help="apply (kinds without dry-run)")
    waiting(submit)
    idempotent(submit)

    for name, what in (("approve", "approve a dry-run"), ("reject", "reject a dry-run")):
        p = sub.add_parser(name, help=what)
        p.add_argument("run", type=positive_id)
        p.add_argument("--comment", default="")

    apply = sub.add_parser("apply", help="apply a plan's latest revision")
    apply.add_argument("plan", type=positive_id)
    apply.add_argument(
        "--dry-run-id",
        "--dry-run-run",
        dest="dry_run_id",
        type=positive_id,
        help="the approved dry-run (where the kind requires one)",
    )
    apply.add_argument("--force-rerun", action="store_true")
    waiting(apply)
    idempotent(apply)

    status = sub.add_parser("status", help="show a run's progress")
    status.add_argument("run", type=positive_id)
    status.add_argument("--json", action="store_true", help="print the run as JSON")
    waiting(status)

    logs = sub.add_parser("logs", help="a run's partitions: errors, outputs and logs")
    logs.add_argument("run", type=positive_id)
    logs.add_argument("--stage", help="only this stage")
    logs.add_argument("--state", help="only partitions in this state (failed, succeeded...)")
    logs.add_argument(
        "--partition", type=int, metavar="INDEX", help="one partition, with its log (--stage)"
    )
    logs.add_argument("--json", action="store_true", help="print the partitions as JSON")

    lister = sub.add_parser("list", help="list runs (default) or plans")
    lister.add_argument("what", nargs="?", choices=("runs", "plans"), default="runs")
    lister.add_argument("--plan", type=positive_id, help="runs of this plan")
    lister.add_argument("--state", help="runs in this state")
    lister.add_argument("--mode", choices=("dry_run", "apply"), help="runs of this mode")
    lister.add_argument("--limit", type=positive_id, default=50, help="at most this many")
    lister.add_argument("--json", action="store_true", help="print the items as JSON lines")

    for name, what in (
        ("abort", "abort a run"),
        ("pause", "pause a run (running partitions finish, nothing new starts)"),
        ("resume", "resume a paused run"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("run", type=positive_id)

    replay = sub.add_parser("replay", help="replay a run's failed partitions as a child run")
    replay.add_argument("run", type=positive_id)
    waiting(replay)

    receipt = sub.add_parser("receipt", help="a run's receipt: Merkle roots, verified or not")
    receipt.add_argument("run", type=positive_id)
    receipt.add_argument("--json", action="store_true", help="print the receipt as JSON")
    return parser


class Cli:
    """One invocation: the API client, the consoles, and a method per subcommand."""

    def __init__(self, api: Api, out: Console, err: Console) -> None:
        self.api = api
        self.out = out
        self.err = err

    def say(self, text: str) -> None:
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    # --- plans and starting runs ----------------------------------------------------------

    def do_submit(self, opts: argparse.Namespace) -> int:
        path = Path(opts.plan_file)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise Exit(EXIT_ERROR, f"{path}: no such file") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Exit(EXIT_ERROR, f"{path}: not valid JSON: {exc}") from None
        if opts.plan:
            plan = self._call(
                lambda: self.api.put(f"plans/{opts.plan}/", document), "plan", opts.plan
            )
        else:
            plan = self.api.request("POST", "plans/", body=document)
        # Two requests, not one transaction as on the server: when the run is refused, the
        # revision written stays (and this line says which it is).
        self.say(f"plan {plan['id']} revision {plan['revision']} {plan['digest']}")
        if not (opts.dry_run or opts.apply):
            return EXIT_OK
        action = "dry-run" if opts.dry_run else "apply"
        run = self.api.post(f"plans/{plan['id']}/{action}/", headers=self._key(opts))
        return self._started(run, opts)

    def do_apply(self, opts: argparse.Namespace) -> int:
        body: dict[str, Any] = {"force_rerun": bool(opts.force_rerun)}
        if opts.dry_run_id:
            body["dry_run"] = opts.dry_run_id
        run = self._call(
            lambda: self.api.post(f"plans/{opts.plan}/apply/", body, headers=self._key(opts)),
            "plan",
            opts.plan,
        )
        return self._started(run, opts)

    def _started(self, run: dict[str, Any], opts: argparse.Namespace) -> int:
        # A run is partitioned by a worker after the request: its digest is known once the
        # manifest is written ("pending" until then; `--wait` prints it when it is known).
        self.say(f"{run_line(run)} digest {run.get('digest') or 'pending'}")
        return self.follow(run, opts) if opts.wait else EXIT_OK

    @staticmethod
    def _key(opts: argparse.Namespace) -> dict[str, str] | None:
        return {"Idempotency-Key": opts.idempotency_key} if opts.idempotency_key else None

    # --- decisions and run actions --------------------------------------------------------

    def do_approve(self, opts: argparse.Namespace) -> int:
        return self._act(opts.run, "approve", {"comment": opts.comment})

    def do_reject(self, opts: argparse.Namespace) -> int:
        return self._act(opts.run, "reject", {"comment": opts.comment})

    def do_abort(self, opts: argparse.Namespace) -> int:
        return self._act(opts.run, "abort", None)

    def do_pause(self, opts: argparse.Namespace) -> int:
        return self._act(opts.run, "pause", None, optional_endpoint=True)

    def do_resume(self, opts: argparse.Namespace) -> int:
        return self._act(opts.run, "resume", None, optional_endpoint=True)

    def do_replay(self, opts: argparse.Namespace) -> int:
        child = self._call(lambda: self.api.post(f"runs/{opts.run}/replay/"), "run", opts.run)
        digest = child.get("digest") or "pending"
        self.say(f"{run_line(child)} digest {digest} (replay of run {opts.run})")
        return self.follow(child, opts) if opts.wait else EXIT_OK

    def _act(self, run_id: int, action: str, body: Any, *, optional_endpoint: bool = False) -> int:
        if optional_endpoint:
            # The run is looked up first, so that a 404 or 405 on the action itself means
            # this server does not offer it (an older HXO), not that the run is missing.
            self._call(lambda: self.api.get(f"runs/{run_id}/"), "run", run_id)
            try:
                run = self.api.post(f"runs/{run_id}/{action}/", body)
            except ApiFailure as exc:
                if exc.status in (404, 405):
                    raise Exit(
                        EXIT_ERROR,
                        f"this server does not offer `{action}` "
                        f"(POST /api/v1/runs/{{id}}/{action}/ answered {exc.status}); "
                        "it needs an HXO with pause and resume",
                    ) from None
                raise
        else:
            run = self._call(lambda: self.api.post(f"runs/{run_id}/{action}/", body), "run", run_id)
        # A paused running run reads `paused`; one paused before it ran (`pending`,
        # `partitioning`) keeps its state, with the flag: say it. An older server said
        # `running` with the flag.
        paused = " paused" if run.get("paused") and run.get("state") != "paused" else ""
        self.say(f"run {run.get('id')} {run.get('state')}{paused}")
        return EXIT_OK

    # --- reading --------------------------------------------------------------------------

    def do_status(self, opts: argparse.Namespace) -> int:
        run = self._call(lambda: self.api.get(f"runs/{opts.run}/"), "run", opts.run)
        if opts.json:
            self.out.print_json(data=run)
            return EXIT_OK
        if opts.wait:
            return self.follow(run, opts)
        for line in status_lines(run):
            self.say(line)
        # As `manage.py hxo status`: without --wait only a failed run exits 3.
        return EXIT_RUN_FAILED if run.get("state") == "failed" else EXIT_OK

    def do_receipt(self, opts: argparse.Namespace) -> int:
        receipt = self._call(lambda: self.api.get(f"runs/{opts.run}/receipt/"), "run", opts.run)
        if opts.json:
            self.out.print_json(data=receipt)
        else:
            verdict = "verified" if receipt.get("verified") else "NOT verified"
            self.say(f"run {opts.run} receipt {verdict} merkle root {receipt.get('merkle_root')}")
            for stage in receipt.get("stages") or []:
                leaves = stage.get("leaves")
                count = len(leaves) if isinstance(leaves, list) else leaves
                self.say(f"  {stage.get('id')} root {stage.get('root')} ({count} leaves)")
        return EXIT_OK if receipt.get("verified") else EXIT_RUN_FAILED

    def do_list(self, opts: argparse.Namespace) -> int:
        if opts.what == "plans":
            if opts.plan or opts.state or opts.mode:
                raise Exit(EXIT_REFUSED, "--plan, --state and --mode filter runs, not plans")
            items = self.api.pages("plans/", limit=opts.limit)
            render: Callable[[dict[str, Any]], str] = lambda p: (  # noqa: E731
                f"plan {p.get('id')} revision {p.get('revision')} {p.get('name')}"
            )
        else:
            items = self.api.pages(
                "runs/", limit=opts.limit, plan=opts.plan, state=opts.state, mode=opts.mode
            )
            render = lambda r: (  # noqa: E731
                f"{run_line(r)} plan {r.get('plan')} by {r.get('created_by')} "
                f"at {r.get('created_at')}"
            )
        for item in items:
            if opts.json:
                self.out.print(json.dumps(item), markup=False, highlight=False, soft_wrap=True)
            else:
                self.say(render(item))
        return EXIT_OK

    def do_logs(self, opts: argparse.Namespace) -> int:
        self._call(lambda: self.api.get(f"runs/{opts.run}/"), "run", opts.run)
        partitions = list(
            self.api.pages(
                f"runs/{opts.run}/partitions/", stage=opts.stage, state=opts.state, limit=None
            )
        )
        if opts.partition is not None:
            if not opts.stage:
                raise Exit(EXIT_REFUSED, "--partition needs --stage (indexes count per stage)")
            partitions = [p for p in partitions if p.get("index") == opts.partition]
            if not partitions:
                raise Exit(
                    EXIT_ERROR, f"no partition {opts.stage}#{opts.partition} in run {opts.run}"
                )
        for p in partitions:
            if opts.json:
                self.out.print(json.dumps(p), markup=False, highlight=False, soft_wrap=True)
                continue
            head = (
                f"{p.get('stage')}#{p.get('index')} {p.get('state')} "
                f"attempts {p.get('attempts')} {p.get('duration_ms') or 0} ms"
            )
            self.say(f"{head} {p['label']}" if p.get("label") else head)
            error = p.get("error")
            if error:
                if isinstance(error, dict):
                    self.say(f"  error {error.get('code')}: {error.get('message')}")
                else:
                    self.say(f"  error {error}")
            if p.get("output") is not None:
                self.say(f"  output {json.dumps(p['output'], sort_keys=True)[:500]}")
        if opts.partition is not None:
            self._partition_log(opts.run, opts.stage, opts.partition)
        return EXIT_OK

    def _partition_log(self, run_id: int, stage: str, index: int) -> None:
        """Print the partition's log from `GET /api/v1/runs/{id}/partitions/{index}/log/`:
        what its executor logged on the worker, newest last, each line prefixed "  | "."""
        try:
            log = self.api.get(f"runs/{run_id}/partitions/{index}/log/", stage=stage)
        except ApiFailure as exc:
            if exc.status == 405:  # a server older than the endpoint
                self.say("  (this server keeps no per-partition logs)")
                return
            raise
        lines = log.get("lines") if isinstance(log, dict) else None
        if not isinstance(lines, list):
            self.say(f"  log {json.dumps(log)[:500]}")
            return
        if not lines:
            self.say("  log: nothing was logged")
            return
        dropped = int(log.get("dropped_lines") or 0)
        more = f", {dropped} older dropped" if dropped else ""
        self.say(f"  log: {len(lines)} line{'s' if len(lines) != 1 else ''}{more}")
        for line in lines:
            self.say(f"  | {line}")

    # --- following a run ------------------------------------------------------------------

    def follow(self, run: dict[str, Any], opts: argparse.Namespace) -> int:
        """Show the run until it has finished; its exit code (0, 3, or 4 on --wait-timeout)."""
        follower = Follower(self.out)
        deadline = None if opts.wait_timeout is None else time.monotonic() + opts.wait_timeout
        failing_since: float | None = None
        try:
            while True:
                follower.update(run)
                if run.get("state") in FINISHED:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    follower.close(run)
                    raise Exit(
                        EXIT_WAIT_TIMEOUT,
                        f"run {run.get('id')} still {run.get('state')} after "
                        f"{opts.wait_timeout:g} s; it goes on on the server",
                    )
                time.sleep(opts.interval)  # the polling interval, not a wait for work
                try:
                    run = self.api.get(f"runs/{run['id']}/")
                    failing_since = None
                except ApiFailure as exc:
                    # A restarting server or a proxy's 502 must not fail a long CI wait.
                    transient = exc.status is None or exc.status >= 500
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if not transient or now - failing_since > TRANSIENT_GRACE_S:
                        raise
        except KeyboardInterrupt:
            follower.close(run)
            raise
        follower.close(run)
        if run.get("digest"):
            self.say(f"run {run.get('id')} digest {run['digest']}")
        return EXIT_RUN_FAILED if run.get("state") in UNSUCCESSFUL else EXIT_OK

    # --- errors ---------------------------------------------------------------------------

    @staticmethod
    def _call(fn: Callable[[], Any], what: str, ident: int) -> Any:
        """`fn()`, with a 404 said as `manage.py hxo` says it: no plan N / no run N."""
        try:
            return fn()
        except ApiFailure as exc:
            if exc.status == 404:
                raise Exit(EXIT_ERROR, f"no {what} {ident}") from None
            raise


def report_failure(exc: ApiFailure, err: Console) -> int:
    """Print an API failure as `manage.py hxo` prints a refusal; the exit code for it."""

    def say(text: str) -> None:
        err.print(text, markup=False, highlight=False, soft_wrap=True)

    if exc.status is None or exc.status >= 500 or exc.code == "not_json":
        say(f"error ({exc.code}): {exc.detail}")
        return EXIT_ERROR
    if exc.status == 401:
        say(f"error ({exc.code}): {exc.detail} (check --token / HXO_TOKEN)")
        return EXIT_ERROR
    if exc.status == 404:
        say(f"error ({exc.code}): {exc.detail}")
        return EXIT_ERROR
    say(f"refused ({exc.code}): {exc.detail}")
    for e in exc.errors:
        say(f"  {e.get('path')}: {e.get('code')}: {e.get('message')}")
    if "diff" in exc.extra:
        say(json.dumps(exc.extra["diff"], indent=2, default=str))
    return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hxo` with `argv` (default: the process's arguments); the exit code."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    out = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)

    def fail(code: int, message: str) -> int:
        err.print(message, markup=False, highlight=False, soft_wrap=True)
        return code

    if not opts.url:
        return fail(EXIT_ERROR, "name the server with --url URL (or set HXO_URL)")
    if not opts.token:
        return fail(EXIT_ERROR, "give an API token with --token KEY (or set HXO_TOKEN)")
    try:
        normalise_base_url(opts.url)
    except ValueError as exc:
        return fail(EXIT_ERROR, f"--url / HXO_URL: {exc}")
    cli = Cli(Api(opts.url, opts.token, timeout_s=opts.http_timeout or None), out, err)
    try:
        return getattr(cli, f"do_{opts.action}")(opts)
    except Exit as exc:
        if exc.message:
            fail(exc.code, exc.message)
        return exc.code
    except ApiFailure as exc:
        return report_failure(exc, err)
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted; the run goes on on the server")


def entry_point() -> NoReturn:
    """The `hxo` console script."""
    sys.exit(main())
