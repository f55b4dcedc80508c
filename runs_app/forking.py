"""Partitioning on two cores: half of a CPU-bound job list done in a forked child.

The partitioning task runs in one worker while the others wait for its partitions, and what it
does to a big tree (hashing every file, parsing every module) holds the GIL for most of its
time. `in_two` cuts the job list in two halves of about equal cost, forks a child that does the
second half and sends its results back through a pipe (`marshal`: lists, tuples, dicts,
strings, bytes, numbers and None only), and does the first half itself meanwhile.

Why `os.fork` and not `multiprocessing`: django-q's workers are daemonic processes, which
`multiprocessing` refuses to give children. The child only runs `work` on its half (no
database, no logging, no imports it did not already have) and leaves with `os._exit`, so it
never runs the parent's atexit handlers nor closes the parent's database connections.

Whatever happens to the child (it raised, could not marshal its results, was killed, hung on
a lock another thread held at the fork), its half is done again here: the result is the
parent's serial result either way, only later, and an error the work raises is raised here,
by the parent's own run of that half.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")

# Seconds a child is given beyond four times the parent's own half before it is killed and
# its half done here (a child forked from a threaded process can in principle block forever
# on a lock another thread held at the fork).
CHILD_GRACE_S = 10.0


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to pipe `fd` until its writer closes it (bytes, True), or what
    arrived by `deadline` (a `time.monotonic()` value) if it is still open then (bytes,
    False). Closes `fd`."""
    chunks: list[bytes] = []
    # poll, not select: select refuses descriptors of 1024 and above, which a worker with
    # many open files (connections, logs) hands out.
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return b"".join(chunks), False
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
    finally:
        os.close(fd)


def in_two(
    jobs: Sequence[J],
    work: Callable[[list[J]], list[Any]],
    *,
    cost: Callable[[J], int],
    min_cost: int,
) -> list[Any]:
    """`work(jobs)`, one result per job in order, with the second half (by `cost`) done by a
    forked child when the jobs' total cost reaches `min_cost` and the machine has two cores.

    `work` must be a pure function of its jobs that returns a list of marshal-able values, one
    per job: the child's results are checked for length only. Below `min_cost`, on one core
    or without `os.fork`, or when the fork fails, `work(jobs)` here. Raises what `work`
    raises (from the parent's half, or the child's half done again here)."""
    jobs = list(jobs)
    costs = [cost(job) for job in jobs]
    total = sum(costs)
    if total < min_cost or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork") or len(jobs) < 2:
        return work(jobs)
    cut, acc = len(jobs), 0
    for i, c in enumerate(costs):
        acc += c
        if acc * 2 >= total:
            cut = i + 1
            break
    mine, theirs = jobs[:cut], jobs[cut:]
    if not theirs:
        return work(jobs)
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return work(jobs)
    if pid == 0:  # pragma: no cover (the child; its results are checked by the parent's tests)
        status = 1
        try:
            os.close(read_fd)
            data = marshal.dumps(work(theirs))
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    started = time.monotonic()
    try:
        first = work(mine)
    finally:
        # Also when this half raised: the child is reaped (or killed) before the error goes on.
        # An exception while waiting (django-q's timeout raises inside whatever runs) kills
        # it too, so no child is left hashing or parsing for a task that is gone.
        whole, data = False, b""
        try:
            deadline = time.monotonic() + CHILD_GRACE_S + 4 * (time.monotonic() - started)
            data, whole = _read_until(read_fd, deadline)
        finally:
            if not whole:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                _pid, status = os.waitpid(pid, 0)
            except ChildProcessError:
                # Reaped by someone else (a SIGCHLD handler): the data alone says if whole.
                status = 0
        if not whole:
            status = 1
    second: list[Any] | None = None
    if status == 0:
        with contextlib.suppress(ValueError, EOFError, TypeError):
            second = marshal.loads(data)
    if not isinstance(second, list) or len(second) != len(theirs):
        second = work(theirs)
    return first + second
