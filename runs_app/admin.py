"""Plans in the Django admin: read-only, for the registry admin's migration actions.

Plans are authored in the dashboard and the API (every write is a revision made by
`runs_app.services`); here a staff user who holds hxo:plan can bring selected plans to the
current job-kind versions, or see what that would change, after publishing a new version.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from blueprints_app.validation import load_kinds
from hxo_site.capabilities import has_capability
from hxo_site.errors import ServiceError
from hxo_site.net import client_ip
from runs_app import services
from runs_app.models import Plan


def _outdated(plan: Plan, kinds: dict[str, Any]) -> list[str]:
    pins = plan.latest_revision.kind_versions or {}
    return [
        f"{name} v{version} → v{kinds[name].version}"
        for name, version in sorted(pins.items())
        if name in kinds and version != kinds[name].version
    ]


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", "latest_number", "kind_versions", "updated_at"]
    search_fields = ["name"]
    ordering = ["-updated_at", "-id"]
    actions = ["migrate_dry_run", "migrate"]
    fields = ["name", "description", "latest_number", "kind_versions", "created_by"]
    readonly_fields = fields

    def has_module_permission(self, request: HttpRequest) -> bool:
        return has_capability(request.user, "view")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return has_capability(request.user, "view")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_plan_permission(self, request: HttpRequest) -> bool:
        return has_capability(request.user, "plan")

    @admin.display(description="Kind versions (latest revision)")
    def kind_versions(self, obj: Plan) -> str:
        outdated = _outdated(obj, load_kinds())
        if outdated:
            return "outdated: " + "; ".join(outdated)
        pins = obj.latest_revision.kind_versions or {}
        return ", ".join(f"{k} v{v}" for k, v in sorted(pins.items())) or "none"

    @admin.action(description="Migrate to current kind versions: dry-run", permissions=["plan"])
    def migrate_dry_run(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        self._migrate(request, queryset, dry_run=True)

    @admin.action(description="Migrate to current kind versions", permissions=["plan"])
    def migrate(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        self._migrate(request, queryset, dry_run=False)

    def _migrate(self, request: HttpRequest, queryset: QuerySet[Plan], *, dry_run: bool) -> None:
        for plan in queryset.order_by("pk"):
            try:
                report = services.plan_migrate(
                    plan=plan,
                    actor=request.user,
                    dry_run=dry_run,
                    client_ip=client_ip(request),
                )
            except ServiceError as exc:
                errors = "; ".join(f"{e['path']}: {e['message']}" for e in exc.errors)
                self.message_user(
                    request,
                    f"“{plan.name}” cannot be migrated automatically: {errors}",
                    messages.ERROR,
                )
                continue
            data = report.as_dict()
            changes = "; ".join(
                (f"{c['stage']}: " if c["stage"] else "") + c["message"] for c in data["changes"]
            )
            if data["status"] == "up_to_date":
                self.message_user(request, f"“{plan.name}” is up to date.", messages.INFO)
            elif data["status"] == "needs_attention":
                errors = "; ".join(f"{e['path']}: {e['message']}" for e in data["errors"])
                self.message_user(
                    request,
                    f"“{plan.name}” cannot be migrated automatically: {errors}",
                    messages.ERROR,
                )
            elif dry_run:
                self.message_user(request, f"“{plan.name}” would migrate: {changes}", messages.INFO)
            else:
                self.message_user(
                    request,
                    f"“{plan.name}” migrated to revision {data['revision']} ({changes}); "
                    "it needs a new dry-run and approval.",
                    messages.SUCCESS,
                )
