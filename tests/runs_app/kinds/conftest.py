"""Fixtures for the built-in job kinds: a scratch workspace, scratch storages and targets,
and a small driver that partitions a stage and executes its partitions the way the engine
does (inputs and manifest through a JSON round trip, contexts built from the JobKind rows
the migrations load).

Nothing here writes under examples/ or var/: storages, the bytecode directory and
database targets all point into the test's tmp_path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from blueprints_app.models import JobKind
from blueprints_app.registry import (
    EXECUTORS,
    PARTITIONERS,
    ExecutionContext,
    PartitionContext,
    StageManifest,
)
from blueprints_app.validation import schema_validator

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
DEMO_WORKSPACE = EXAMPLES / "workspace"
PLAN_DIGEST = hashlib.sha256(b"plan revision 1").hexdigest()


def schema_problems(schema: dict[str, Any], instance: Any) -> list[str]:
    return [e.message for e in schema_validator(schema).iter_errors(instance)]


@dataclasses.dataclass
class StageRun:
    """One stage partitioned and (optionally) executed, as the engine would."""

    stage: dict[str, Any]
    kind: JobKind
    manifest: StageManifest
    data: dict[str, Any]
    results: list[dict[str, Any]]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(p.inputs)) for p in self.manifest.partitions]


class Driver:
    def __init__(self) -> None:
        self.heartbeats = 0

    def partition(self, stage: dict[str, Any]) -> tuple[JobKind, StageManifest, dict[str, Any]]:
        kind = JobKind.objects.get(kind=stage["kind"])
        manifest = PARTITIONERS[stage["partitioner"]]().partition(
            PartitionContext(stage=stage, kind=kind)
        )
        # What the engine stores is JSON: run everything through it, as a worker would see it.
        data = json.loads(json.dumps(manifest.data))
        for spec in manifest.partitions:
            problems = schema_problems(kind.input_schema, json.loads(json.dumps(spec.inputs)))
            assert problems == [], f"{stage['partitioner']} inputs invalid for {kind.kind}"
        return kind, manifest, data

    def context(
        self,
        stage: dict[str, Any],
        kind: JobKind,
        data: dict[str, Any],
        index: int,
        spec: Any,
        *,
        dry_run: bool,
        plan_digest: str = PLAN_DIGEST,
        fence: int = 1,
        heartbeat: Callable[[], None] | None = None,
    ) -> ExecutionContext:
        def beat() -> None:
            self.heartbeats += 1

        return ExecutionContext(
            run_id=1,
            partition_id=index + 1,
            stage=stage,
            kind=kind,
            inputs=json.loads(json.dumps(spec.inputs)),
            fingerprints=dict(spec.fingerprints),
            manifest=data,
            plan_digest=plan_digest,
            dry_run=dry_run,
            attempt=fence,
            fence=fence,
            heartbeat=heartbeat or beat,
        )

    def run(
        self,
        stage: dict[str, Any],
        *,
        dry_run: bool,
        plan_digest: str = PLAN_DIGEST,
        fence: int = 1,
    ) -> StageRun:
        """Partition, then execute every partition wave by wave; outputs are checked."""
        kind, manifest, data = self.partition(stage)
        executor = EXECUTORS[stage["executor"]]()
        order = sorted(range(len(manifest.partitions)), key=lambda i: manifest.partitions[i].wave)
        results: list[dict[str, Any]] = [{} for _ in manifest.partitions]
        for i in order:
            ctx = self.context(
                stage,
                kind,
                data,
                i,
                manifest.partitions[i],
                dry_run=dry_run,
                plan_digest=plan_digest,
                fence=fence,
            )
            out = executor.execute(ctx)
            out = json.loads(json.dumps(out))  # outputs must be JSON, as the engine stores them
            if dry_run:
                assert isinstance(out.get("summary"), str) and out["summary"]
                assert "\n" not in out["summary"]
            else:
                assert schema_problems(kind.output_schema, out) == [], out
            results[i] = out
        return StageRun(stage, kind, manifest, data, results)


@pytest.fixture
def driver(db: None) -> Driver:
    return Driver()


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip())


SMALL_BACKEND: dict[str, str | bytes] = {
    "app/__init__.py": '"""A tiny app."""\n',
    "app/util.py": "def add(a, b):\n    return a + b\n\n\n_HIDDEN = 1\n",
    "app/text.py": "import re\n\nWORD = re.compile(r'\\w+')\n\n\ndef words(s):\n"
    "    return WORD.findall(s)\n",
    "app/models/__init__.py": "from app.models.item import Item\n\n__all__ = ['Item']\n",
    "app/models/item.py": "from app.util import add\n\n\nclass Item:\n"
    "    def total(self, a, b):\n        return add(a, b)\n",
    "app/services/__init__.py": "",
    "app/services/cart.py": "from ..models.item import Item\nfrom app import text\n\n\n"
    "def make():\n    return Item()\n",
    "app/api.py": "from app.services import cart\n\n\ndef handle():\n    return cart.make()\n",
    "app/static/logo.txt": "not python, still packed\n",
}


@pytest.fixture
def scratch(tmp_path: Path, settings: Any) -> dict[str, Path]:
    """Storages, bytecode directory and VAR_DIR inside tmp_path (the module registry is a
    table of the test database)."""
    var = tmp_path / "var"
    dirs = {
        "var": var,
        "artifacts": var / "artifacts",
        "staging": var / "staging",
        "bytecode": var / "cache" / "bytecode",
    }
    settings.VAR_DIR = var
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(dirs["artifacts"])},
        },
        "staging": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(dirs["staging"])},
        },
    }
    settings.HXO_BYTECODE_DIR = str(dirs["bytecode"])
    return dirs


@pytest.fixture
def workspace(tmp_path: Path, settings: Any, scratch: dict[str, Path]) -> Path:
    """A registered workspace "t" in tmp_path with a small Python package; tests add files."""
    root = tmp_path / "ws"
    write_files(root, SMALL_BACKEND)
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "t": str(root.resolve())}
    return root


@pytest.fixture
def demo_copy(tmp_path: Path, settings: Any, scratch: dict[str, Path]) -> Path:
    """A copy of the shipped demo workspace, registered as "demo" (tests may change it)."""
    root = tmp_path / "demo"
    shutil.copytree(DEMO_WORKSPACE, root, ignore=shutil.ignore_patterns("__pycache__"))
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, "demo": str(root.resolve())}
    return root


@pytest.fixture
def sqlite_target(tmp_path: Path, settings: Any) -> Callable[[str], Path]:
    """`make("name")` registers a SQLite target file in tmp_path and returns its path."""

    def make(name: str = "db") -> Path:
        path = tmp_path / f"{name}.sqlite3"
        settings.HXO_DATABASE_TARGETS = {
            **settings.HXO_DATABASE_TARGETS,
            name: f"sqlite:///{path}",
        }
        return path

    return make


PG_ADMIN_URL = os.environ.get(
    "HXO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pg_role_url(admin_url: str, role: str, dbname: str) -> str:
    """`admin_url` with another role and database (trust auth in tests: no password)."""
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{role}@{host}:{parts.port}" if parts.port else f"{role}@{host}"
    return urlunsplit((parts.scheme, netloc, f"/{dbname}", "", ""))


@pytest.fixture
def pg_target(settings: Any) -> Iterator[str]:
    """A scratch PostgreSQL database registered as target "pg"; dropped afterwards.

    It belongs to a role made for it, without superuser or any other server-wide right (HXO
    refuses superuser targets): the rights a migration role needs, in its own database.
    Skipped when PostgreSQL is unreachable, except under CI=true where that is a failure.
    """
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"hxo_kinds_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    url = pg_role_url(PG_ADMIN_URL, name, name)
    settings.HXO_DATABASE_TARGETS = {**settings.HXO_DATABASE_TARGETS, "pg": url}
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        admin.close()


# 2001-09-09T01:46:40Z: any write after backdate() gives a file a later mtime.
BACKDATED_NS = 1_000_000_000 * 10**9


def backdate(root: Path) -> None:
    """Set the access and modification times of every file under `root` to BACKDATED_NS, so
    that a later rewrite shows in `tree_snapshot`'s mtime_ns whatever the file system's
    timestamp granularity (a rewrite within the same clock tick keeps the same mtime)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, ns=(BACKDATED_NS, BACKDATED_NS))


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under root with (inode, size, mtime_ns): what a test compares for writes."""
    found = {}
    if not root.exists():
        return found
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            st = path.stat()
            found[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found
