"""Per-partition logs: what an executor logs while it runs one partition, kept with it.

`capture()` attaches a `logging.Handler` to the root logger for the duration of one
partition's execution and keeps the records emitted *on the worker's thread* (the drainer
runs partitions one after another on one thread; the heartbeat thread and other drainers'
threads are left out), formatted with a UTC timestamp, their level and logger, and the
traceback of a record logged with `exc_info` (the engine logs an executor's unexpected
exception that way, so its traceback lands here and not only on the worker's stderr).

Bounded twice, as a ring: the last PARTITION_LOG_MAX_LINES lines and PARTITION_LOG_MAX_BYTES
bytes of UTF-8, oldest dropped first (the end of a log is what says why it failed); a line
longer than MAX_LINE_BYTES is cut. `store()` appends an attempt's lines to the partition's
`PartitionLog` row under the same bounds, in the transaction that records the outcome.

The idea is Airflow's task-instance log and GitLab CI's job trace: the output of one unit of
work, shown beside its state; the bound is what keeps 100k partitions' logs affordable.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from django.utils import timezone

from runs_app.models.engine import (
    PARTITION_LOG_MAX_BYTES,
    PARTITION_LOG_MAX_LINES,
    PartitionLog,
)

# One line may not take a whole log's room: a huge repr is cut here, with a mark.
MAX_LINE_BYTES = 8 * 1024
CUT_MARK = " …[cut]"


class _UtcFormatter(logging.Formatter):
    """`<ISO-8601 UTC, ms> <LEVEL> <logger>: <message>` and, for `exc_info`, the traceback."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


FORMATTER = _UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cut(line: str) -> str:
    data = line.encode("utf-8")
    if len(data) <= MAX_LINE_BYTES:
        return line
    keep = MAX_LINE_BYTES - len(CUT_MARK.encode("utf-8"))
    return data[:keep].decode("utf-8", errors="ignore") + CUT_MARK


class BoundedLines:
    """A ring of text lines bounded by count and by UTF-8 bytes (each line counts its bytes
    plus one for the newline that joins it); `dropped` counts the lines pushed out."""

    def __init__(
        self,
        lines: list[str] | None = None,
        *,
        dropped: int = 0,
        max_lines: int = PARTITION_LOG_MAX_LINES,
        max_bytes: int = PARTITION_LOG_MAX_BYTES,
    ) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.dropped = dropped
        self._lines: deque[str] = deque()
        self._bytes = 0
        for line in lines or []:
            self.add(line)

    def add(self, line: str) -> None:
        """Append one line (without newline), dropping the oldest past either bound."""
        line = _cut(line)
        self._lines.append(line)
        self._bytes += len(line.encode("utf-8")) + 1
        while len(self._lines) > self.max_lines or self._bytes > self.max_bytes:
            old = self._lines.popleft()
            self._bytes -= len(old.encode("utf-8")) + 1
            self.dropped += 1

    def extend(self, text: str) -> None:
        """Append every line of `text` (a formatted record may span lines: a traceback)."""
        for line in text.split("\n"):
            self.add(line)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


class _ThreadCapture(logging.Handler):
    """Keeps the records of one thread in a `BoundedLines`."""

    def __init__(self, thread_id: int) -> None:
        super().__init__(level=logging.NOTSET)
        self.thread_id = thread_id
        self.buffer = BoundedLines()
        self.setFormatter(FORMATTER)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            self.buffer.extend(self.format(record))
        except Exception:  # a record that cannot be formatted must not fail the partition
            self.handleError(record)


class Captured:
    """What `capture()` yields: the lines kept so far (`lines`, `dropped`) of one execution."""

    def __init__(self, handler: _ThreadCapture) -> None:
        self._handler = handler

    @property
    def lines(self) -> list[str]:
        return self._handler.buffer.lines

    @property
    def dropped(self) -> int:
        return self._handler.buffer.dropped


@contextmanager
def capture() -> Iterator[Captured]:
    """Keep the log records the current thread emits inside the block (see the module).

    Records still pass the loggers' levels first (HXO_LOG_LEVEL, `info` by default): what a
    worker would print is what the partition keeps. The handler is removed on exit, whatever
    happened inside."""
    handler = _ThreadCapture(threading.get_ident())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield Captured(handler)
    finally:
        root.removeHandler(handler)


def attempt_header(attempt: int) -> str:
    """The line that opens one attempt's lines in a partition's log."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return f"{now} INFO hxo: --- attempt {attempt} ---"


def store(entries: list[tuple[int, int, list[str], int]]) -> None:
    """Append attempts' lines to their partitions' logs: `(partition id, attempt, lines,
    lines already dropped while capturing)` each; one read and one upsert for all of them.
    Call it inside the transaction that records the outcomes, for the partitions whose
    outcome was written (a fenced-out holder's lines are not kept)."""
    entries = [e for e in entries if e[2]]
    if not entries:
        return
    existing = {
        pk: (text, dropped)
        for pk, text, dropped in PartitionLog.objects.filter(
            partition_id__in=[e[0] for e in entries]
        ).values_list("partition_id", "text", "dropped_lines")
    }
    now = timezone.now()
    rows = []
    for pk, attempt, lines, dropped in entries:
        old_text, old_dropped = existing.get(pk, ("", 0))
        ring = BoundedLines(old_text.split("\n") if old_text else [], dropped=old_dropped)
        ring.add(attempt_header(attempt))
        ring.dropped += dropped
        for line in lines:
            ring.add(line)
        rows.append(
            PartitionLog(
                partition_id=pk,
                text="\n".join(ring.lines),
                dropped_lines=ring.dropped,
                updated_at=now,
            )
        )
    PartitionLog.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["partition"],
        update_fields=["text", "dropped_lines", "updated_at"],
    )
