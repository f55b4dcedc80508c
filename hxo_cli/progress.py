"""Showing a run as it goes: bars drawn by rich on a terminal, plain lines anywhere else.

On a terminal, rich redraws its bars in place (cursor moves, never a cleared screen), and run
state changes are printed above them, so the scrollback keeps what happened. Without a
terminal (a CI log, a pipe) one line is written per change: a stage's line when its state or
counts move, the run's line when its state does, nothing while nothing changes.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn


def run_line(run: dict[str, Any]) -> str:
    """`run 5 (dry_run) running`: the line `manage.py hxo` prints for a run."""
    return f"run {run.get('id')} ({run.get('mode')}) {run.get('state')}"


def stage_counts(stage: dict[str, Any]) -> tuple[int, int, int, int]:
    """(done, total, failed, running) of a stage from the API's `counts`; done counts
    succeeded and reused partitions."""
    c = stage.get("counts") or {}
    done = int(c.get("succeeded", 0)) + int(c.get("reused", 0))
    return done, int(c.get("total", 0)), int(c.get("failed", 0)), int(c.get("running", 0))


def stage_line(stage: dict[str, Any]) -> str:
    """`  echo running 3/6 done, 0 failed, 2 running`, as `manage.py hxo` prints it."""
    done, total, failed, running = stage_counts(stage)
    return (
        f"  {stage.get('id')} {stage.get('state')} {done}/{total} done, "
        f"{failed} failed, {running} running"
    )


def status_lines(run: dict[str, Any]) -> list[str]:
    """A run's whole status: its line, one line per stage, the first error of each failing
    error code, and the Merkle root once it has one."""
    lines = [run_line(run)]
    for stage in run.get("stages") or []:
        lines.append(stage_line(stage))
        for err in stage.get("errors_by_code") or []:
            lines.append(
                f"    {err.get('count')} x {err.get('code')}: {str(err.get('example', ''))[:200]}"
            )
    if run.get("merkle_root"):
        lines.append(f"  merkle root {run['merkle_root']}")
    return lines


class Follower:
    """Shows successive snapshots of one run (the API's run objects) on `console`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._last_run_state: str | None = None
        self._last_stage: dict[str, tuple[Any, ...]] = {}
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def update(self, run: dict[str, Any]) -> None:
        """Show one snapshot: what changed since the last one."""
        if run.get("state") != self._last_run_state:
            self._last_run_state = run.get("state")
            self._print(run_line(run))
        if self.live:
            self._draw_bars(run)
            return
        for stage in run.get("stages") or []:
            key = (stage.get("state"), *stage_counts(stage))
            if self._last_stage.get(stage.get("id")) != key:
                self._last_stage[stage.get("id")] = key
                self._print(stage_line(stage))

    def close(self, run: dict[str, Any]) -> None:
        """Stop drawing (the bars stay on screen) and print the final status."""
        if self._progress is not None:
            self._draw_bars(run)
            self._progress.stop()
            self._progress = None
        lines = status_lines(run)
        # The run's line was printed by `update` when the run reached this state: once is
        # enough (a finished run's line used to be printed twice in a row).
        if self._last_run_state == run.get("state") and lines and lines[0] == run_line(run):
            lines = lines[1:]
        for line in lines:
            self._print(line)

    def _print(self, line: str) -> None:
        target = self._progress.console if self._progress is not None else self.console
        # markup=False/highlight=False: stage ids and error text are data, not rich markup.
        target.print(line, markup=False, highlight=False, soft_wrap=True)

    def _draw_bars(self, run: dict[str, Any]) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  {task.description}", markup=False),
                BarColumn(bar_width=30),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[detail]}", markup=False),
                console=self.console,
                auto_refresh=False,
            )
            self._progress.start()
        for stage in run.get("stages") or []:
            done, total, failed, _ = stage_counts(stage)
            detail = f"{stage.get('state')} {done}/{total}" + (
                f", {failed} failed" if failed else ""
            )
            sid = str(stage.get("id"))
            if sid not in self._tasks:
                self._tasks[sid] = self._progress.add_task(sid, total=max(total, 1), detail=detail)
            self._progress.update(
                self._tasks[sid],
                total=max(total, 1),
                completed=done if total else 0,
                detail=detail,
            )
        self._progress.refresh()
