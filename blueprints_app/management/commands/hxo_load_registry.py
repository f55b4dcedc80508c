"""`manage.py hxo_load_registry [--reset]`: the contract's job kinds into the registry.

Adds the kinds of the contract that are missing and keeps the others as they are, since a
registry admin may have edited them. `--reset` writes the contract's values over them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from blueprints_app.contract import CONTRACT_VERSION, FINDINGS_ACK_KINDS, contract_kinds
from blueprints_app.models import JobKind
from blueprints_app.services import JobKindInvalid, job_kind_save


class Command(BaseCommand):
    help = "Load the blueprint contract's job kinds that are missing (--reset: overwrite all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset",
            action="store_true",
            help="overwrite existing contract kinds with the contract's values (loses edits)",
        )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        counts = {"created": 0, "kept": 0, "reset": 0}
        for entry in contract_kinds():
            name = entry["kind"]
            job_kind = JobKind.objects.filter(kind=name).first()
            if job_kind is None:
                action, job_kind = "created", JobKind()
                # HXO's addition to the contract's safety policy (not a contract field).
                job_kind.require_findings_ack = name in FINDINGS_ACK_KINDS
            elif options["reset"]:
                action = "reset"
            else:
                counts["kept"] += 1
                self.stdout.write(f"  {name}: present, kept")
                continue
            changed = [f for f, v in entry.items() if getattr(job_kind, f, None) != v]
            for field, value in entry.items():
                setattr(job_kind, field, value)
            try:
                job_kind_save(job_kind=job_kind, changed_fields=changed, via="hxo_load_registry")
            except JobKindInvalid as exc:
                raise CommandError(f"contract kind {name} is not valid here: {exc}") from None
            counts[action] += 1
            self.stdout.write(f"  {name}: {action}")
        self.stdout.write(
            f"Registry (contract {CONTRACT_VERSION}): "
            + ", ".join(f"{n} {action}" for action, n in counts.items())
            + "."
        )
