"""The Python interpreter deploy.prime compiles for, and compiling with it in a subprocess.

A stage names its target with `python_version` ("3.12") or `python_executable` (a path); by
default it is the interpreter running HXO. Bytecode is interpreter-specific (magic number,
cache tag, the key of the PEP 552 source hash), so bytecode for another interpreter is made by
that interpreter: `compile_batch` runs it once per partition (`-I -S`: isolated, no site
packages) with a short script that py_compiles each file and reports per-file errors as JSON.
The script only compiles: workspace code is never imported or run, by any interpreter.

Which interpreters may be named: `settings.HXO_PYTHON_INTERPRETERS` (a list of paths) when
set, else every `python3.N` found on PATH plus the running one. A stage naming another
interpreter is refused at plan validation (`validate_params`) and again, permanently, at
partition time (the machine may have changed in between).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from blueprints_app.registry import ComponentError

INTERPRETER_NOT_FOUND = "interpreter_not_found"
INTERPRETER_FAILED = "interpreter_failed"
VERSION_RE = re.compile(r"^3\.(\d{1,2})$")
# Probing runs the interpreter with -I -S and reads four facts; a real interpreter answers in
# tens of milliseconds.
PROBE_TIMEOUT_S = 10
# Compiling one partition's modules (a package of Django is ~1 s for ~500 files here).
COMPILE_TIMEOUT_S = 600

ON_MODULE_ERROR = {
    "type": "string",
    "enum": ["skip", "fail"],
    "default": "skip",
    "title": "On a module that does not compile",
    "description": "deploy.prime: a module that does not compile. skip: it is reported in "
    "the partition's failed_modules and the others are compiled (as compileall does); "
    "fail: the partition fails and writes nothing.",
}


def prime_params() -> dict[str, Any]:
    """JSON Schema properties of the deploy.prime params every prime partitioner takes:
    `on_module_error`, `python_version`, `python_executable`, `package_roots`."""
    return {
        "on_module_error": ON_MODULE_ERROR,
        "python_version": {
            "type": "string",
            "pattern": VERSION_RE.pattern,
            "title": "Target Python version",
            "description": "deploy.prime: compile bytecode for this Python (e.g. 3.12), "
            "which must be installed here; default: the Python running HXO.",
        },
        "python_executable": {
            "type": "string",
            "minLength": 1,
            "maxLength": 500,
            "title": "Target Python executable",
            "description": "deploy.prime: compile bytecode with this interpreter (an absolute "
            "path among the interpreters HXO allows); exclusive with python_version.",
        },
        "package_roots": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 500},
            "maxItems": 100,
            "title": "Package roots",
            "description": "deploy.prime: directories (relative to the workspace) on sys.path: "
            "modules are named relative to them. Default: discovered from pyproject.toml, "
            "setup.cfg and setup.py (src/ layouts included), else the root's package.",
        },
    }


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A Python interpreter: its real path, (major, minor), bytecode magic and cache tag."""

    executable: str
    version: tuple[int, int]
    magic: bytes
    cache_tag: str

    @property
    def is_running(self) -> bool:
        """Whether this is the interpreter running HXO (compile in-process)."""
        return self.magic == running().magic and self.cache_tag == running().cache_tag

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]} ({self.executable})"

    def as_json(self) -> dict[str, Any]:
        return {
            "executable": self.executable,
            "version": f"{self.version[0]}.{self.version[1]}",
            "magic": self.magic.hex(),
            "cache_tag": self.cache_tag,
        }

    @classmethod
    def from_json(cls, data: Any) -> Interpreter:
        """The interpreter a manifest pinned (`as_json`); ComponentError if malformed."""
        try:
            major, minor = (int(x) for x in data["version"].split("."))
            return cls(data["executable"], (major, minor), bytes.fromhex(data["magic"]),
                       str(data["cache_tag"]))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ComponentError(
                "the stage manifest's interpreter is malformed: re-run the dry-run",
                code="invalid_manifest",
                permanent=True,
                path="manifest.interpreter",
            ) from None


@functools.cache
def running() -> Interpreter:
    """The interpreter running HXO."""
    import importlib.util

    return Interpreter(
        os.path.realpath(sys.executable),
        sys.version_info[:2],
        importlib.util.MAGIC_NUMBER,
        sys.implementation.cache_tag or "",
    )


_PROBE = (
    "import sys, importlib.util, json;"
    "print(json.dumps([sys.executable, sys.version_info[:2], importlib.util.MAGIC_NUMBER.hex(),"
    " sys.implementation.cache_tag]))"
)


@functools.lru_cache(maxsize=64)
def probe(executable: str) -> Interpreter | None:
    """Ask `executable` what it is; None when it is not a working Python 3 with bytecode."""
    try:
        done = subprocess.run(
            [executable, "-I", "-S", "-c", _PROBE],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        exe, version, magic, tag = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        return None
    if done.returncode != 0 or not tag or version[0] != 3:
        return None
    return Interpreter(os.path.realpath(exe), (version[0], version[1]), bytes.fromhex(magic), tag)


def allowed_executables() -> list[str]:
    """Paths of the interpreters a stage may name (see the module docstring), real paths."""
    configured = getattr(settings, "HXO_PYTHON_INTERPRETERS", None)
    if configured is None:
        found = [shutil.which(f"python3.{n}") for n in range(6, 20)]
        # pyenv's shims answer only for the versions selected in the caller's directory;
        # the interpreters themselves are under $PYENV_ROOT/versions.
        pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
        found.extend(str(p) for p in sorted(pyenv.glob("3.*/bin/python3")))
        configured = [p for p in found if p and "/shims/" not in p]
    paths = {os.path.realpath(p) for p in configured if p}
    paths.add(running().executable)
    return sorted(paths)


def interpreters() -> list[Interpreter]:
    """Every allowed interpreter that answers the probe."""
    found = [probe(p) for p in allowed_executables()]
    return [i for i in found if i is not None]


def resolve(params: dict[str, Any]) -> Interpreter:
    """The target interpreter a stage's (schema-valid) params name.

    Raises ComponentError(INTERPRETER_NOT_FOUND, permanent, path params.python_version or
    params.python_executable) when it is not installed or not allowed, or both are given.
    """
    version = params.get("python_version")
    executable = params.get("python_executable")
    if version and executable:
        raise ComponentError(
            "give python_version or python_executable, not both",
            code="invalid_params",
            permanent=True,
            path="params.python_executable",
        )
    if executable:
        real = os.path.realpath(executable)
        allowed = allowed_executables()
        found = probe(real) if os.path.isabs(executable) and real in allowed else None
        if found is None:
            raise ComponentError(
                f"{executable} is not an installed Python interpreter HXO may use "
                f"(allowed: {', '.join(allowed)})",
                code=INTERPRETER_NOT_FOUND,
                permanent=True,
                path="params.python_executable",
            )
        return found
    if version:
        major, minor = (int(x) for x in version.split("."))
        here = running()
        if here.version == (major, minor):
            return here
        for interp in interpreters():
            if interp.version == (major, minor):
                return interp
        have = sorted({f"{i.version[0]}.{i.version[1]}" for i in interpreters()})
        raise ComponentError(
            f"Python {version} is not installed here (installed: {', '.join(have)})",
            code=INTERPRETER_NOT_FOUND,
            permanent=True,
            path="params.python_version",
        )
    return running()


def validate(params: dict[str, Any]) -> list[ComponentError]:
    """The interpreter a stage names, checked at plan validation: [] or one error."""
    try:
        resolve(params)
    except ComponentError as exc:
        return [exc]
    return []


# The script the target interpreter runs: JSON on stdin, [[source, cfile or null, dfile]...];
# cfile null means check only (compile(), nothing written). One JSON line per file on stdout.
_COMPILE_SCRIPT = r"""
import json, py_compile, sys
jobs = json.load(sys.stdin)
for src, cfile, dfile in jobs:
    try:
        if cfile is None:
            with open(src, "rb") as f:
                compile(f.read(), dfile, "exec", dont_inherit=True)
        else:
            py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        out = None
    except py_compile.PyCompileError as exc:
        e = exc.exc_value
        out = [type(e).__name__, getattr(e, "lineno", None), str(getattr(e, "msg", None) or e)]
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as e:
        out = [type(e).__name__, getattr(e, "lineno", None), str(getattr(e, "msg", None) or e)]
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


def compile_batch(
    interp: Interpreter,
    jobs: list[tuple[Path, Path | None, str]],
    stop_with: Callable[[Callable[[str], None] | None], None] | None = None,
) -> list[dict[str, Any] | None]:
    """Compile (or, with cfile None, only check) each (source, cfile, dfile) with `interp`
    in one subprocess; per job None (compiled) or {"type", "line", "message"} (the
    compiler's error). The pyc is a checked-hash pyc (PEP 552) written by py_compile.

    `stop_with` (ExecutionContext.stop_with) registers a cancel that kills the subprocess
    when the partition must stop (aborted run, lost lease, time budget); the caller's next
    heartbeat then raises the reason. Raises ComponentError(INTERPRETER_NOT_FOUND, permanent)
    when the interpreter is gone, ComponentError(INTERPRETER_FAILED, transient) when it dies
    or stops answering: that is the machine, not the module.
    """
    if not jobs:
        return []
    payload = json.dumps([[str(s), str(c) if c else None, d] for s, c, d in jobs])
    try:
        proc = subprocess.Popen(
            [interp.executable, "-I", "-S", "-c", _COMPILE_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise ComponentError(
            f"Python {interp.label} cannot be started: {exc}",
            code=INTERPRETER_NOT_FOUND,
            permanent=True,
            path="manifest.interpreter",
        ) from None
    if stop_with is not None:
        stop_with(lambda _reason: proc.kill())
    try:
        stdout, stderr = proc.communicate(payload.encode(), timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ComponentError(
            f"Python {interp.label} did not finish compiling in {COMPILE_TIMEOUT_S} s",
            code=INTERPRETER_FAILED,
        ) from None
    finally:
        if stop_with is not None:
            stop_with(None)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    lines = done.stdout.decode(errors="replace").splitlines()
    if done.returncode != 0 or len(lines) != len(jobs):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise ComponentError(
            f"Python {interp.label} exited with {done.returncode} after {len(lines)} of "
            f"{len(jobs)} modules: {' '.join(tail)}",
            code=INTERPRETER_FAILED,
        )
    results: list[dict[str, Any] | None] = []
    for line in lines:
        row = json.loads(line)
        results.append(None if row is None else {"type": row[0], "line": row[1], "message": row[2]})
    return results
