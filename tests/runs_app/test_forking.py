"""Partitioning on two cores (`runs_app.forking.in_two`) and the file pinning that uses it
(`runs_app.kinds.files.pin`): whatever the child does, the result is the serial result, and an
error in the child's half is raised by the parent. The fork is forced on small inputs here
(the thresholds lowered); the parse side is in tests/runs_app/kinds/test_kinds_prime.py."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from blueprints_app.registry import ComponentError
from runs_app import forking
from runs_app.kinds import files as files_mod
from runs_app.workspaces import Workspace


@pytest.fixture
def two_cores(monkeypatch) -> None:
    monkeypatch.setattr(forking.os, "cpu_count", lambda: 2)


def squares(part: list[int]) -> list[tuple[int, int, int]]:
    return [(x, x * x, os.getpid()) for x in part]


def test_the_second_half_is_done_by_a_child_and_the_result_is_in_order(two_cores) -> None:
    jobs = list(range(50))
    out = forking.in_two(jobs, squares, cost=lambda x: 1, min_cost=0)
    assert [(x, sq) for x, sq, _ in out] == [(x, x * x) for x in jobs]
    pids = {pid for _, _, pid in out}
    assert os.getpid() in pids and len(pids) == 2  # really two processes
    # Halves by cost, not by count: the first job costs as much as all the others.
    out = forking.in_two(jobs, squares, cost=lambda x: 49 if x == 0 else 1, min_cost=0)
    assert out[0][2] == os.getpid() and {pid for *_, pid in out[1:]} != {os.getpid()}


def test_below_the_threshold_or_on_one_core_nothing_is_forked(monkeypatch) -> None:
    jobs = list(range(10))
    out = forking.in_two(jobs, squares, cost=lambda x: 1, min_cost=11)
    assert {pid for *_, pid in out} == {os.getpid()}
    monkeypatch.setattr(forking.os, "cpu_count", lambda: 1)
    out = forking.in_two(jobs, squares, cost=lambda x: 1, min_cost=0)
    assert {pid for *_, pid in out} == {os.getpid()}


def test_a_child_that_cannot_send_its_half_leaves_it_to_the_parent(two_cores, monkeypatch):
    import marshal

    def refuse(_value):
        raise ValueError("the child cannot marshal")

    monkeypatch.setattr(
        forking, "marshal", types.SimpleNamespace(dumps=refuse, loads=marshal.loads)
    )
    out = forking.in_two(list(range(20)), squares, cost=lambda x: 1, min_cost=0)
    assert [x for x, _, _ in out] == list(range(20))
    assert {pid for *_, pid in out} == {os.getpid()}


def test_an_error_in_the_childs_half_is_raised_by_the_parent(two_cores) -> None:
    parent = os.getpid()
    done_here: list[int] = []

    def work(part: list[int]) -> list[int]:
        if os.getpid() == parent:
            done_here.extend(part)
        if 17 in part:
            raise KeyError(17)
        return part

    with pytest.raises(KeyError):
        forking.in_two(list(range(20)), work, cost=lambda x: 1, min_cost=0)
    assert 17 in done_here  # the parent ran the failing half itself, and raised its error


def tree(root: Path, n: int = 40) -> Workspace:
    root.mkdir()
    for i in range(n):
        sub = root / f"d{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(os.urandom(100 + 977 * i))
    (root / "d0" / "run.sh").write_text("#!/bin/sh\n")
    (root / "d0" / "run.sh").chmod(0o755)
    return Workspace(name="t", root=root)


def record_pids(monkeypatch, where: Path) -> None:
    """Every process that pins a half appends its pid to `where` (a child's memory is its
    own: a file is how the test sees that the child did its half)."""
    real = files_mod._pin_threaded

    def recorded(files):
        with where.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return real(files)

    monkeypatch.setattr(files_mod, "_pin_threaded", recorded)


def test_pinning_on_two_cores_pins_what_pinning_in_one_does(two_cores, tmp_path, monkeypatch):
    ws = tree(tmp_path / "ws")
    listed = ws.list_files(".")
    monkeypatch.setattr(files_mod, "RACY_WINDOW_NS", 0)  # files written just now get tokens
    monkeypatch.setattr(files_mod, "PIN_PARALLEL_MIN", 10**12)
    serial = files_mod.pin(listed)
    monkeypatch.setattr(files_mod, "PIN_PARALLEL_MIN", 0)
    pids = tmp_path / "pids"
    record_pids(monkeypatch, pids)
    forked = files_mod.pin(listed)
    halves = pids.read_text().split()
    assert len(halves) == 2 and str(os.getpid()) in halves and len(set(halves)) == 2
    assert list(forked) == list(serial) and len(forked) == len(listed) == 41
    assert forked.stats == serial.stats and None not in forked.stats
    assert [r[0] for r in forked] == [f.rel for f in listed]
    assert forked[-1][3] == files_mod.MODE_FILE and any(r[3] == files_mod.MODE_EXEC for r in forked)


def test_a_file_that_is_no_longer_regular_in_the_childs_half_fails_the_pin(
    two_cores, tmp_path, monkeypatch
) -> None:
    ws = tree(tmp_path / "ws")
    listed = ws.list_files(".")
    last = Path(listed[-1].path)
    last.unlink()
    os.mkfifo(last)  # swapped for a FIFO after the listing: refused, never read (no hang)
    monkeypatch.setattr(files_mod, "PIN_PARALLEL_MIN", 0)
    pids = tmp_path / "pids"
    record_pids(monkeypatch, pids)
    with pytest.raises(ComponentError) as err:
        files_mod.pin(listed)
    assert err.value.code == "not_a_regular_file"
    # The child met the FIFO first and failed; the parent did that half again and raised.
    halves = pids.read_text().split()
    assert len(set(halves)) == 2 and halves.count(str(os.getpid())) == 2
