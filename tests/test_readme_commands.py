"""Every `sh` block of the README, pasted into a new shell after `make setup`, works.

Issue 15, "Done when". Each block runs for real in a subprocess whose environment holds only
`PATH` (without any virtualenv), `HOME` and `HXO_VAR_DIR` (a temporary directory, so the
checkout's own database is never touched); settings read the checkout's `.env` as a user's shell
would. Blocks are taken from the Markdown with markdown-it-py (fences whose info is `sh`), so
what is tested is exactly what a reader copies.

How a command is run, by what it is:
- a long-running server (`make run`, `make run-scaled`, `bin/hxo-run`, gunicorn, `qcluster`):
  started in its own session on a free port, probed over HTTP until it answers (<500), then
  stopped the way a terminal's Ctrl-C does (SIGINT to its process group) and must exit;
- `make test`: run with `PYTEST_ARGS` narrowed to one quick file (the whole suite is CI's own
  step; running it here again would take half an hour);
- `pip install -e PATH`: installed into a temporary `--target` instead (the test must not change
  the virtualenv), which the block's later commands get on `PYTHONPATH`;
- any other block: as one bash script (`set -eE -o pipefail`, so any failing command fails it),
  while a background `bin/hxo-run` on a free port stands for the `make run` the README says
  is serving in another shell (`127.0.0.1:8000` is rewritten to that port).
Commands of scaled mode need PostgreSQL and Redis: they run on a private database that is
dropped afterwards, are skipped when either is unreachable, and fail instead under CI=true.
A failure names the README line of the command that failed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

pytestmark = pytest.mark.readme

BASE = Path(__file__).resolve().parent.parent
README = BASE / "README.md"
PYTHON = str(BASE / ".venv" / "bin" / "python")
DEFAULT_ADDR = "127.0.0.1:8000"
PG_SERVER = os.environ.get("HXO_README_PG", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = "redis://127.0.0.1:6379/0"
# Seconds: a block's whole run, a server's start-up (setup included) and its stop.
BLOCK_TIMEOUT_S = 180
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60

SERVER = re.compile(
    r"(^|\s)(make run(-scaled)?|\S*bin/hxo-run|\S*gunicorn|.*manage\.py qcluster)(\s|$)"
)
SUITE = re.compile(r"(^|\s)make test(\s|$)")
PIP_EDITABLE = re.compile(r"^(?P<pip>\S*pip) install -e (?P<path>\S+)$")
SCALED = re.compile(r"make run-scaled")


@dataclass
class Command:
    line: int  # README line (1-based) of its first line
    text: str  # continuation lines joined


@dataclass
class Block:
    line: int  # README line of the block's first content line
    text: str
    commands: list[Command] = field(default_factory=list)

    @property
    def needs_scaled(self) -> bool:
        return bool(SCALED.search(self.text))

    @property
    def per_command(self) -> bool:
        """Blocks holding a server, the suite or an install run command by command."""
        return any(
            SERVER.search(c.text) or SUITE.search(c.text) or PIP_EDITABLE.match(c.text)
            for c in self.commands
        )


def readme_blocks() -> list[Block]:
    """The README's `sh` fences, in order, with their commands (continuations joined)."""
    blocks = []
    for token in MarkdownIt("commonmark").parse(README.read_text()):
        if token.type != "fence" or token.info.strip() != "sh":
            continue
        first = token.map[0] + 2  # map is 0-based and starts at the fence line
        block = Block(first, token.content)
        pending: list[str] = []
        start = first
        for offset, raw in enumerate(token.content.splitlines()):
            if not pending:
                start = first + offset
            pending.append(raw)
            if raw.rstrip().endswith("\\"):
                continue
            text = "\n".join(pending).strip()
            pending = []
            if text and not text.startswith("#"):
                block.commands.append(Command(start, text))
        blocks.append(block)
    return blocks


BLOCKS = readme_blocks()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_path() -> str:
    """PATH as a new login shell has it: without this (or any) virtualenv's bin."""
    return os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "activate").exists()
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text()[-chars:]


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def services_reachable(pg_url: str) -> str | None:
    """None when PostgreSQL and Redis answer, else which one does not."""
    import psycopg
    import redis

    try:
        psycopg.connect(pg_url, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {pg_url}: {exc}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL}: {exc}"
    return None


@dataclass
class Shell:
    """What every block gets: the fresh environment and the background server's port."""

    env: dict[str, str]
    port: int
    tmp: Path
    pg_database: str

    def run(self, script: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", script],
            cwd=BASE,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )

    def serve(self, command: Command, env: dict[str, str]) -> None:
        """Start a server command, wait until it answers, stop it like Ctrl-C; fail with the
        README line when it exits early, never answers or does not stop."""
        port = free_port()
        text = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", command.text)
        env = {**env, "ADDR": f"127.0.0.1:{port}"}
        log = self.tmp / f"server-{command.line}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-c", text],
                cwd=BASE,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        where = f"README.md:{command.line}: {command.text!r}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not answers(f"http://127.0.0.1:{port}/login/"):
                if proc.poll() is not None:
                    pytest.fail(
                        f"{where} exited {proc.returncode} before serving:\n{log.read_text()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{where} did not answer in {START_TIMEOUT_S} s:\n{log.read_text()}"
                    )
                time.sleep(0.5)  # polling a port with a deadline, not waiting for work
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail(f"{where} did not stop on Ctrl-C:\n{tail(log)}")
        deadline = time.monotonic() + 10
        while not port_closed(port):
            assert time.monotonic() < deadline, f"{where}: port {port} still open after stopping"
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shell]:
    tmp = tmp_path_factory.mktemp("readme")
    env = {"PATH": fresh_path(), "HOME": os.environ["HOME"], "HXO_VAR_DIR": str(tmp / "var")}
    stamp = BASE / ".venv" / ".hxo-deps-installed"
    if not stamp.exists() or stamp.stat().st_mtime < (BASE / "pyproject.toml").stat().st_mtime:
        # A virtualenv shared with another checkout (a git worktree) has its stamp there: point
        # make at a fresh one, so no command of this test reinstalls packages into it.
        fresh_stamp = tmp / "deps-stamp"
        fresh_stamp.touch()
        env["MAKEFLAGS"] = f"DEPS_STAMP={fresh_stamp}"
    # `make setup`, the README's precondition, against the temporary HXO_VAR_DIR (it writes the
    # checkout's .env once when missing, as on a fresh clone).
    setup = subprocess.run(
        ["make", "--no-print-directory", "setup"], cwd=BASE, env=env, capture_output=True, text=True
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    port = free_port()
    log = (tmp / "background-server.log").open("w")
    server = subprocess.Popen(
        [PYTHON, "bin/hxo-run", f"127.0.0.1:{port}"],
        cwd=BASE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(f"http://127.0.0.1:{port}/login/"):
        assert server.poll() is None, (tmp / "background-server.log").read_text()
        assert time.monotonic() < deadline, "the background bin/hxo-run never answered"
        time.sleep(0.5)
    pg_database = f"hxo_readme_{os.getpid()}"
    try:
        yield Shell(env=env, port=port, tmp=tmp, pg_database=pg_database)
    finally:
        _stop(server)
        log.close()
        _drop_database(pg_database)


def _drop_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except psycopg.Error:
        pass  # unreachable: nothing was created there


def test_the_readme_has_shell_blocks_to_check() -> None:
    # A README reorganised into other fences would make every case below vanish silently.
    assert len(BLOCKS) >= 8
    assert any(SERVER.search(c.text) for b in BLOCKS for c in b.commands)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_block_works_in_a_fresh_shell(block: Block, shell: Shell) -> None:
    env = dict(shell.env)
    if block.needs_scaled:
        missing = services_reachable(f"{PG_SERVER}/postgres")
        if missing:
            if os.environ.get("CI") == "true":
                pytest.fail(f"README.md:{block.line} needs {missing} (CI=true)")
            pytest.skip(f"README.md:{block.line} needs {missing}")
        # A private database and queue: other checkouts may share this PostgreSQL and Redis.
        env.update(
            DATABASE_URL=f"{PG_SERVER}/{shell.pg_database}",
            REDIS_URL=REDIS_URL,
            HXO_CLUSTER_NAME=f"readme-{os.getpid()}",
        )
    if not block.per_command:
        text = block.text.replace(DEFAULT_ADDR, f"127.0.0.1:{shell.port}")
        # Line 1 of the script is this prologue, line 2 the block's first line.
        trap = f"trap 'echo \"README.md:$((LINENO + {block.line - 2})): exit $?\" >&2' ERR"
        result = shell.run(f"set -eE -o pipefail; {trap}\n{text}", env=env)
        assert result.returncode == 0, (
            f"block at README.md:{block.line} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
        return
    for command in block.commands:
        where = f"README.md:{command.line}: {command.text!r}"
        if SERVER.search(command.text):
            shell.serve(command, env)
            continue
        if SUITE.search(command.text):
            env_suite = {**env, "PYTEST_ARGS": "tests/test_architecture.py -q -p no:cacheprovider"}
            result = shell.run(command.text, env=env_suite)
        elif match := PIP_EDITABLE.match(command.text):
            site = shell.tmp / "site"
            # Built from a copy: a non-editable build leaves build/ beside its sources.
            source = shutil.copytree(BASE / match["path"], shell.tmp / "plugin-source")
            pip = f"{match['pip']} install --quiet --no-deps --target {site}"
            result = shell.run(f"{pip} {shlex.quote(str(source))}", env=env)
            env["PYTHONPATH"] = str(site)
        else:
            result = shell.run(command.text, env=env)
        assert result.returncode == 0, (
            f"{where} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )


if __name__ == "__main__":  # list what would run: python tests/test_readme_commands.py
    for b in BLOCKS:
        for c in b.commands:
            kind = "server" if SERVER.search(c.text) else "suite" if SUITE.search(c.text) else "sh"
            print(f"README.md:{c.line} [{kind}] {c.text.splitlines()[0]}", file=sys.stdout)
