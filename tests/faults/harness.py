"""A deployment of HXO in real processes, for fault tests: gunicorn web servers and `manage.py
qcluster` worker clusters started as subprocesses, each in its own process group, so that a
test can SIGKILL a whole cluster or web server the way a crashed host dies.

Why subprocesses rather than the in-process cluster of tests/runs_app/cluster.py: django-q2
reads its configuration (broker, Redis URL, cluster name) once at import, so a cluster on a
private Redis, or one that can be killed as a whole, has to be another process. They share
the test's database (committed data: the tests are transactional) through DATABASE_URL, and
register the test job kinds through HXO_PLUGINS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

BASE = Path(settings.BASE_DIR)
START_TIMEOUT_S = 60


def require(condition: bool, reason: str) -> None:
    """Missing services fail under CI=true (the CI machine has them), and skip elsewhere."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true needs this for the fault tests: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def current_database_url() -> str:
    """The URL of the database this test runs on (pytest-django's test database)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@dataclasses.dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and every child, at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        _reap_group(self.popen.pid)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_group(pgid: int) -> None:
    # Children of a killed leader are re-parented; wait until the kernel has them gone, so a
    # database connection held by one cannot outlive the test.
    deadline = time.monotonic() + 30
    while _group_alive(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class Deployment:
    """One HXO installation: its environment, and the processes started from it."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {
            key: value
            for key, value in os.environ.items()
            # The test session's own choices that must not leak: its test-database suffix
            # (these processes use the test database by its real name) and broker.
            if key not in ("HXO_TEST_DB_SUFFIX", "DATABASE_URL", "HXO_BROKER", "REDIS_URL")
        }
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "hxo_site.settings",
                "DEBUG": "0",
                "SECRET_KEY": settings.SECRET_KEY,
                "HXO_SECURE_COOKIES": "0",
                "DATABASE_URL": current_database_url(),
                "HXO_VAR_DIR": str(root / "var"),
                "HXO_PLUGINS": "tests.runs_app.testkinds",
                "HXO_LOG_LEVEL": "info",
                # Short leases and drains: a dead worker's partitions come back in seconds.
                "HXO_LEASE_MS": "1500",
                "HXO_DRAIN_BUDGET_S": "2",
                "HXO_RETRY_BACKOFF_MS": "100",
                "HXO_MAX_ATTEMPTS": "5",
                "HXO_WORKERS": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env)
        self.procs: list[Proc] = []
        self.web_url = ""

    # --- processes --------------------------------------------------------------------

    def _start(self, name: str, argv: list[str]) -> Proc:
        log = self.root / "logs" / f"{name}-{len(self.procs)}.log"
        popen = subprocess.Popen(
            argv,
            cwd=BASE,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to be killed as one
        )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_cluster(self) -> Proc:
        proc = self._start("cluster", [sys.executable, "manage.py", "qcluster"])
        deadline = time.monotonic() + START_TIMEOUT_S
        while "running." not in proc.output():
            assert proc.alive(), f"qcluster exited:\n{proc.output()}"
            assert time.monotonic() < deadline, f"qcluster did not start:\n{proc.output()}"
            time.sleep(0.1)
        return proc

    def start_web(self, port: int | None = None) -> Proc:
        port = port or (int(self.web_url.rsplit(":", 1)[1]) if self.web_url else free_port())
        proc = self._start(
            "web",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "hxo_site.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--timeout",
                "60",
            ],
        )
        self.web_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.web_url}/login/", timeout=5) as response:
                    if response.status == 200:
                        return proc
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert proc.alive(), f"gunicorn exited:\n{proc.output()}"
            assert time.monotonic() < deadline, f"gunicorn did not start:\n{proc.output()}"
            time.sleep(0.1)

    def python(self, code: str, timeout: float = 120) -> str:
        """Run Python with Django set up in this deployment's environment; its stdout."""
        script = "import django\ndjango.setup()\n" + code
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=BASE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def reconcile(self) -> dict[str, Any]:
        """One reconciler pass, as the django-q2 schedule would run it on a worker host."""
        out = self.python(
            "import json\nfrom runs_app.tasks import reconcile\n"
            "print('REPORT', json.dumps(reconcile(), default=str))\n"
        )
        line = next(x for x in out.splitlines() if x.startswith("REPORT "))
        return json.loads(line.removeprefix("REPORT "))

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive() or _group_alive(proc.pid):
                proc.kill()

    # --- the API ----------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        *,
        token: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.web_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Token {token}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


class RedisServer:
    """A private redis-server on its own port (nothing saved), to stop and start at will."""

    def __init__(self, root: Path) -> None:
        self.binary = shutil.which("redis-server") or ""
        self.port = free_port()
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.RedisError:
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL: what a crashed or restarted Redis looks like to its clients (and with
        nothing saved, it comes back empty: every queued wake-up is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
