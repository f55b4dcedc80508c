"""bin/hxo-run (`make run`): web server and worker cluster together; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

BASE = Path(settings.BASE_DIR)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgid = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z":
            found.append((int(stat.parent.name), int(ppid), int(pgid)))
    return found


def children_of(pid: int) -> list[int]:
    return [p for p, ppid, _ in processes() if ppid == pid]


def group_members(groups: list[int]) -> list[int]:
    return [p for p, _, pgid in processes() if pgid in groups]


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process table from /proc")
def test_ctrl_c_stops_the_web_server_and_the_cluster(tmp_path):
    env = {
        **os.environ,
        "HXO_VAR_DIR": str(tmp_path),
        "DEBUG": "1",
        # Its own queue: on the Redis broker the test session's queue holds wake-ups for runs
        # of the session's test database, which this cluster must not take.
        "HXO_CLUSTER_NAME": f"hxo-run-test-{os.getpid()}",
        # What the web server prints reaches the pipe as it happens, not when it exits.
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=BASE, env=env, check=True
    )
    port = free_port()
    run = subprocess.Popen(
        [sys.executable, "bin/hxo-run", f"127.0.0.1:{port}"],
        cwd=BASE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/schema/") as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() >= deadline:
                    # What the web server and the cluster printed says why (a failed check, a
                    # database it could not reach): stop them the way a second Ctrl-C does.
                    run.send_signal(signal.SIGINT)
                    run.send_signal(signal.SIGINT)
                    raise AssertionError(
                        f"the web server did not come up:\n{run.communicate(timeout=30)[0]}"
                    ) from None
                assert run.poll() is None, run.communicate()[0]
                time.sleep(0.2)
        children = children_of(run.pid)
        assert len(children) == 2
        assert len(group_members(children)) > 2  # runserver's reloader child, cluster workers

        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            # A second Ctrl-C stops every child at once; SIGKILL alone would orphan them.
            run.send_signal(signal.SIGINT)
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.kill()

    assert run.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output
    assert "olivia" in output
    assert "has stopped" in output  # the cluster's clean shutdown
    # Each child leads its own process group: nothing of either (workers...) is left.
    assert group_members(children) == []
