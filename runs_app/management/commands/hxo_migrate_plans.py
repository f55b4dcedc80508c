"""`manage.py hxo_migrate_plans [--dry-run] [--plan ID ...] [--json]`: stored plans to the
current kind versions.

Each plan's latest revision is migrated by `runs_app.services.plan_migrate` (the declared
steps of blueprints_app.evolution, then validation against the current registry) and stored
as a new revision; the report says per plan what changed. `--dry-run` reports and writes
nothing. Acts as --user (default $HXO_USER), who needs hxo:plan, like the `hxo` command.

Exit status: 0 when every plan is up to date or migrated (or would be), 2 when a plan cannot
be migrated automatically (it needs an edit: the report names the errors).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from hxo_site import codes
from hxo_site.errors import ServiceError
from runs_app import services
from runs_app.management.commands.hxo import object_id
from runs_app.models import Plan

EXIT_NEEDS_ATTENTION = 2


class Command(BaseCommand):
    help = "Rewrite stored plans to the current job-kind versions, as new revisions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default=os.environ.get("HXO_USER"), help="act as this user")
        parser.add_argument("--dry-run", action="store_true", help="report, write nothing")
        parser.add_argument(
            "--plan", type=object_id, action="append", help="only this plan (repeatable)"
        )
        parser.add_argument("--json", action="store_true", help="print the reports as JSON")
        parser.add_argument(
            "--all", action="store_true", help="also list plans that are up to date"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        name = opts["user"]
        if not name:
            raise CommandError("name the acting user with --user NAME (or set HXO_USER)")
        actor = get_user_model().objects.filter(username=name, is_active=True).first()
        if actor is None:
            raise CommandError(f"no active user {name!r}")
        plans = Plan.objects.order_by("pk")
        if opts["plan"]:
            plans = plans.filter(pk__in=opts["plan"])
            missing = sorted(set(opts["plan"]) - set(plans.values_list("pk", flat=True)))
            if missing:
                raise CommandError(f"no plan {', '.join(map(str, missing))}")
        reports: list[dict[str, Any]] = []
        for plan in plans.iterator(chunk_size=200):
            try:
                report = services.plan_migrate(
                    plan=plan, actor=actor, dry_run=opts["dry_run"]
                ).as_dict()
            except ServiceError as exc:
                if exc.code != codes.MIGRATION_FAILED:
                    raise CommandError(
                        f"plan {plan.pk}: refused ({exc.code}): {exc.message}"
                    ) from None
                report = {
                    "plan": plan.pk,
                    "name": plan.name,
                    "status": "needs_attention",
                    "dry_run": False,
                    "from_revision": plan.latest_number,
                    "revision": None,
                    "changes": exc.extra.get("changes", []),
                    "errors": exc.errors,
                }
            reports.append(report)
        if opts["json"]:
            self.stdout.write(json.dumps(reports, indent=2, ensure_ascii=False, default=str))
        else:
            self._print(reports, show_all=opts["all"] or bool(opts["plan"]))
        if any(r["status"] == "needs_attention" for r in reports):
            sys.exit(EXIT_NEEDS_ATTENTION)

    def _print(self, reports: list[dict[str, Any]], *, show_all: bool) -> None:
        for r in reports:
            if r["status"] == "up_to_date" and not show_all:
                continue
            head = f"plan {r['plan']} “{r['name']}” revision {r['from_revision']}: "
            if r["status"] == "migrated":
                head += f"migrated → revision {r['revision']} (needs a new dry-run and approval)"
            elif r["status"] == "would_migrate":
                head += "would migrate"
            elif r["status"] == "needs_attention":
                head += "cannot be migrated automatically"
            else:
                head += "up to date"
            self.stdout.write(head)
            for change in r["changes"]:
                where = f"stage {change['stage']}: " if change.get("stage") else ""
                self.stdout.write(f"  {where}{change['message']}")
            for err in r["errors"]:
                self.stdout.write(f"  error {err['path']}: {err['code']}: {err['message']}")
        counts: dict[str, int] = {}
        for r in reports:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        order = ("migrated", "would_migrate", "needs_attention", "up_to_date")
        summary = ", ".join(f"{counts.get(s, 0)} {s.replace('_', ' ')}" for s in order)
        dry = " (dry-run: nothing written)" if any(r["dry_run"] for r in reports) else ""
        self.stdout.write(f"{len(reports)} plans: {summary}{dry}.")
