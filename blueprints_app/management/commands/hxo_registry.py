"""`manage.py hxo_registry export|import|docs`: the job-kind registry as data.

    hxo_registry export [FILE]           JSON with every kind and its versions (stdout: -)
    hxo_registry import FILE [--dry-run] validated through job_kind_save, all-or-nothing
    hxo_registry docs [--output PATH] [--check]
                                         docs/registry.md from the registry; --check exits 1
                                         when the file differs and writes nothing

Imports act as a registry admin named by --user (default $HXO_USER), recorded on the versions
they create; without one they are recorded as made by the system (a shell on the host is
already trusted with the database).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from blueprints_app.registry_io import (
    RegistryImportError,
    dumps,
    registry_export,
    registry_import,
    registry_markdown,
)
from hxo_site import parsers
from hxo_site.capabilities import can_edit_registry

DOCS_PATH = "docs/registry.md"


class Command(BaseCommand):
    help = "Export or import the job-kind registry as JSON, or generate docs/registry.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default=os.environ.get("HXO_USER"), help="act as this user")
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="write the registry as JSON")
        export.add_argument("file", nargs="?", default="-", help="output file (default: stdout)")
        imp = sub.add_parser("import", help="read a registry export")
        imp.add_argument("file", help="an export file ('-' for stdin)")
        imp.add_argument("--dry-run", action="store_true", help="validate, report, write nothing")
        docs = sub.add_parser("docs", help=f"generate {DOCS_PATH}")
        docs.add_argument("--output", default=None, help=f"default: {DOCS_PATH} in the checkout")
        docs.add_argument("--check", action="store_true", help="exit 1 if the file is stale")

    def handle(self, *args: Any, **opts: Any) -> None:
        getattr(self, f"do_{opts['action']}")(opts)

    def do_export(self, opts: dict[str, Any]) -> None:
        text = dumps(registry_export())
        if opts["file"] == "-":
            self.stdout.write(text, ending="")
        else:
            Path(opts["file"]).write_text(text)
            self.stderr.write(f"wrote {opts['file']}")

    def do_import(self, opts: dict[str, Any]) -> None:
        user = None
        if opts["user"]:
            user = get_user_model().objects.filter(username=opts["user"], is_active=True).first()
            if user is None:
                raise CommandError(f"no active user {opts['user']!r}")
            if not can_edit_registry(user):
                raise CommandError(f"{user} is not a registry admin")
        try:
            raw = sys.stdin.read() if opts["file"] == "-" else Path(opts["file"]).read_text()
            # The API's rules: duplicate keys, NaN and 1e400 are refused, not silently kept.
            data = parsers.loads(raw)
        except FileNotFoundError:
            raise CommandError(f"{opts['file']}: no such file") from None
        except parsers.JSONRefused as exc:
            where = f" at {exc.path}" if exc.path else ""
            raise CommandError(f"{opts['file']}: not valid JSON{where}: {exc.message}") from None
        except UnicodeDecodeError as exc:
            raise CommandError(f"{opts['file']}: not valid JSON: {exc}") from None
        try:
            report = registry_import(data=data, user=user, dry_run=opts["dry_run"])
        except RegistryImportError as exc:
            for err in exc.errors:
                self.stderr.write(f"  {err['path']}: {err['code']}: {err['message']}")
            raise CommandError("import refused; nothing was written") from None
        for item in report:
            version = (
                f"v{item.version_to}"
                if item.version_from in (None, item.version_to)
                else f"v{item.version_from} → v{item.version_to}"
            )
            added = f", history +{item.versions_added}" if item.versions_added else ""
            self.stdout.write(f"  {item.kind}: {item.action} ({version}{added})")
        counts = {
            a: sum(r.action == a for r in report) for a in ("created", "updated", "unchanged")
        }
        summary = ", ".join(f"{n} {a}" for a, n in counts.items())
        self.stdout.write(
            f"Dry-run, nothing written: {summary}." if opts["dry_run"] else f"Imported: {summary}."
        )

    def do_docs(self, opts: dict[str, Any]) -> None:
        path = Path(opts["output"] or Path(settings.BASE_DIR) / DOCS_PATH)
        text = registry_markdown()
        if opts["check"]:
            if not path.exists() or path.read_text() != text:
                self.stderr.write(f"{path} is out of date: run `make registry-docs`")
                sys.exit(1)
            self.stdout.write(f"{path} is up to date")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.stdout.write(f"wrote {path}")
