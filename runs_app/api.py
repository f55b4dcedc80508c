"""REST API v1 for plans, runs, partitions, approvals and the audit log.

Thin views: each checks the capability, calls one service or selector, and shapes the answer.
Service refusals (`ServiceError`) leave through the API's exception handler
(`hxo_site.api_errors`) as the one error shape with the service's code and status.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hxo_site import codes, parameters
from hxo_site.errors import ApiError
from hxo_site.models import AuditEvent
from hxo_site.net import client_ip
from hxo_site.pagination import AuditPagination, PartitionsPagination, RunsPagination
from hxo_site.permissions import capability_required
from hxo_site.serializers import ErrorSerializer
from runs_app import selectors, services
from runs_app.models import (
    RUN_PUBLIC_STATES,
    Partition,
    PartitionState,
    Plan,
    Run,
    RunMode,
)
from runs_app.serializers import (
    ApplySerializer,
    ApproveSerializer,
    AuditEventSerializer,
    CommentSerializer,
    MigrateRequestSerializer,
    PartitionLogSerializer,
    PartitionSerializer,
    PlanMigrationSerializer,
    PlanSerializer,
    PlanWriteSerializer,
    ReceiptSerializer,
    RevisionSerializer,
    RunDetailSerializer,
    RunSerializer,
    ThrottleSerializer,
)

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid request; see `errors`"),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated"),
    403: OpenApiResponse(ErrorSerializer, description="Missing capability"),
    404: OpenApiResponse(ErrorSerializer, description="Not found"),
}
CONFLICT = {409: OpenApiResponse(ErrorSerializer, description="Refused in this state")}
PRECONDITION = {
    412: OpenApiResponse(ErrorSerializer, description="If-Match names an older revision")
}
IDEMPOTENCY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="The same key with the same request (method, path and body) returns the same "
    "run; the same key with another request is refused with 422 `idempotency_key_reused`",
)
KEY_REUSED = {
    422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key used for another request")
}


# Every filter takes one value: a repeated parameter is refused (400 invalid_value), never
# silently narrowed to its last value; so is a value that cannot match (an unknown state...).
ONCE = "Give it at most once; a repeated or unknown value is refused with 400 invalid_value."


def _object_body(request: Request) -> dict[str, Any]:
    # No body reads as {} (a dict); `null`, `[]` or a string is a mistake, not "no body".
    if not isinstance(request.data, dict):
        raise ApiError("the body must be a JSON object", code=codes.INVALID_TYPE)
    return request.data


def _refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            "the body has unknown fields",
            code=codes.UNKNOWN_FIELD,
            errors=[
                {"path": k, "code": codes.UNKNOWN_FIELD, "message": f"unknown field {k!r}"}
                for k in unknown
            ],
        )


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > 200 or any(ord(c) < 32 for c in key):
        raise ApiError(
            "Idempotency-Key must be 1-200 printable characters",
            code=codes.INVALID_VALUE,
            errors=[{"path": "Idempotency-Key", "code": codes.INVALID_VALUE, "message": "bad"}],
        )
    return key


def _run_response(run: Run, code: int = status.HTTP_200_OK) -> Response:
    return Response(RunSerializer(selectors.run_with_stages(run.pk)).data, status=code)


# --- Plans ----------------------------------------------------------------------------------


class PlanListCreate(generics.ListAPIView):
    serializer_class = PlanSerializer

    def get_permissions(self) -> list[Any]:
        cap = "plan" if self.request.method == "POST" else "view"
        return [capability_required(cap)()]

    def get_queryset(self) -> QuerySet[Plan]:
        return selectors.plans_with_latest_revision()

    @extend_schema(summary="Plans")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Create a plan (its first revision)",
        request=PlanWriteSerializer,
        responses={201: PlanSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        plan = services.plan_create(
            actor=request.user, document=request.data, client_ip=client_ip(request)
        )
        return Response(PlanSerializer(plan).data, status=status.HTTP_201_CREATED)


IF_MATCH = OpenApiParameter(
    "If-Match",
    str,
    OpenApiParameter.HEADER,
    description="The plan's `ETag` (its latest revision digest) as read: a write is refused "
    "with 412 `precondition_failed` when the plan changed since",
)


def _if_match(request: Request) -> list[str] | None:
    """The entity tags of an `If-Match` header (RFC 9110 §13.1.1), unquoted; None without one.

    Weak tags (`W/"..."`) never match: If-Match uses the strong comparison.
    """
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tags = []
    for part in header.split(","):
        part = part.strip()
        if part == "*":
            tags.append("*")
        elif len(part) >= 2 and part[0] == part[-1] == '"':
            tags.append(part[1:-1])
        elif not part.startswith('W/"'):
            raise ApiError(
                'If-Match must list quoted entity tags ("<digest>") or be *',
                code=codes.INVALID_VALUE,
                errors=[
                    {
                        "path": "If-Match",
                        "code": codes.INVALID_VALUE,
                        "message": "not an entity tag",
                    }
                ],
            )
    return tags


def _plan_response(plan: Plan) -> Response:
    """A plan with its `ETag`: the latest revision's digest, what `If-Match` compares."""
    data = PlanSerializer(plan).data
    response = Response(data)
    response["ETag"] = f'"{data["digest"]}"'
    return response


class PlanDetail(APIView):
    def get_permissions(self) -> list[Any]:
        cap = "view" if self.request.method == "GET" else "plan"
        return [capability_required(cap)()]

    @extend_schema(
        summary="A plan at its latest revision", responses={200: PlanSerializer, **ERRORS}
    )
    def get(self, request: Request, pk: int) -> Response:
        return _plan_response(get_object_or_404(Plan, pk=pk))

    def _write(self, request: Request, pk: int, *, partial: bool) -> Response:
        plan = get_object_or_404(Plan, pk=pk)
        services.plan_update(
            plan=plan,
            actor=request.user,
            document=request.data,
            client_ip=client_ip(request),
            partial=partial,
            if_match=_if_match(request),
        )
        return _plan_response(plan)

    @extend_schema(
        summary="Replace the plan document (a new revision)",
        request=PlanWriteSerializer,
        parameters=[IF_MATCH],
        responses={200: PlanSerializer, **ERRORS, **PRECONDITION},
    )
    def put(self, request: Request, pk: int) -> Response:
        return self._write(request, pk, partial=False)

    @extend_schema(
        summary="Change some fields of the plan document (a new revision)",
        request=PlanWriteSerializer,
        parameters=[IF_MATCH],
        responses={200: PlanSerializer, **ERRORS, **PRECONDITION},
    )
    def patch(self, request: Request, pk: int) -> Response:
        return self._write(request, pk, partial=True)


class PlanRevisions(generics.ListAPIView):
    serializer_class = RevisionSerializer
    permission_classes = [capability_required("view")]

    def get_queryset(self) -> QuerySet[Any]:
        plan = get_object_or_404(Plan, pk=self.kwargs["pk"])
        return plan.revisions.select_related("author").order_by("-number")

    @extend_schema(summary="Revision history with digests")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class PlanMigrate(APIView):
    """Bring the latest revision to the current kind versions (a new revision), or report
    what that would change with `{"dry_run": true}`."""

    permission_classes = [capability_required("plan")]

    @extend_schema(
        summary="Migrate the plan to the current kind versions",
        request=MigrateRequestSerializer,
        responses={200: PlanMigrationSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = get_object_or_404(Plan, pk=pk)
        # An empty body parses to an empty QueryDict (a dict); `[]` or `null` are refused.
        body = _object_body(request)
        _refuse_unknown(body, {"dry_run"})
        data = MigrateRequestSerializer(data=body)
        data.is_valid(raise_exception=True)
        report = services.plan_migrate(
            plan=plan,
            actor=request.user,
            dry_run=data.validated_data["dry_run"],
            client_ip=client_ip(request),
        )
        return Response(report.as_dict())


class PlanDryRun(APIView):
    permission_classes = [capability_required("submit")]

    @extend_schema(
        summary="Start a dry-run of the latest revision",
        request=None,
        parameters=[IDEMPOTENCY],
        responses={202: RunSerializer, **ERRORS, **CONFLICT, **KEY_REUSED},
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = get_object_or_404(Plan, pk=pk)
        # No fields: `{"force_rerun": "yes"}` or `{"revision": 3}` is refused, as apply does.
        _refuse_unknown(_object_body(request), set())
        run = services.run_start_dry_run(
            plan=plan,
            actor=request.user,
            idempotency_key=_idempotency_key(request),
            client_ip=client_ip(request),
        )
        return _run_response(run, status.HTTP_202_ACCEPTED)


class PlanApply(APIView):
    permission_classes = [capability_required("submit")]

    @extend_schema(
        summary="Apply the latest revision (naming the approved dry-run where required)",
        request=ApplySerializer,
        parameters=[IDEMPOTENCY],
        responses={202: RunSerializer, **ERRORS, **CONFLICT, **KEY_REUSED},
    )
    def post(self, request: Request, pk: int) -> Response:
        plan = get_object_or_404(Plan, pk=pk)
        body = _object_body(request)
        _refuse_unknown(body, {"dry_run", "force_rerun"})
        data = ApplySerializer(data=body)
        data.is_valid(raise_exception=True)
        run = services.run_apply(
            plan=plan,
            actor=request.user,
            dry_run_id=data.validated_data.get("dry_run"),
            force_rerun=data.validated_data["force_rerun"],
            idempotency_key=_idempotency_key(request),
            client_ip=client_ip(request),
        )
        return _run_response(run, status.HTTP_202_ACCEPTED)


# --- Runs -----------------------------------------------------------------------------------


class RunList(generics.ListAPIView):
    serializer_class = RunSerializer
    pagination_class = RunsPagination
    permission_classes = [capability_required("view")]

    def get_queryset(self) -> QuerySet[Run]:
        params = self.request.query_params
        runs = selectors.runs(
            plan=parameters.optional_id(params, "plan"),
            state=parameters.choice(params, "state", RUN_PUBLIC_STATES),
            mode=parameters.choice(params, "mode", RunMode.values),
        )
        return runs.select_related("revision", "requested_by").prefetch_related(
            "run_stages", "approvals__user"
        )

    @extend_schema(
        summary="Runs",
        parameters=[
            OpenApiParameter("plan", int, description=f"A plan id. {ONCE}"),
            OpenApiParameter("state", str, enum=RUN_PUBLIC_STATES, description=ONCE),
            OpenApiParameter("mode", str, enum=RunMode.values, description=ONCE),
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class RunDetail(APIView):
    permission_classes = [capability_required("view")]

    @extend_schema(
        summary="A run with per-stage progress and, for a dry-run, its change summary",
        responses={200: RunDetailSerializer, **ERRORS},
    )
    def get(self, request: Request, pk: int) -> Response:
        get_object_or_404(Run, pk=pk)
        run = selectors.run_with_stages(pk)
        return Response(RunDetailSerializer(run).data)


class RunPartitions(generics.ListAPIView):
    serializer_class = PartitionSerializer
    pagination_class = PartitionsPagination
    permission_classes = [capability_required("view")]

    def get_queryset(self) -> QuerySet[Any]:
        run = get_object_or_404(Run, pk=self.kwargs["pk"])
        params = self.request.query_params
        stage_ids = list(run.run_stages.values_list("stage_id", flat=True))
        return selectors.partitions_of(
            run,
            stage=parameters.choice(params, "stage", stage_ids),
            state=parameters.choice(params, "state", PartitionState.values),
        )

    @extend_schema(
        summary="Partitions of a run",
        parameters=[
            OpenApiParameter("stage", str, description=f"A stage id of the run. {ONCE}"),
            OpenApiParameter("state", str, enum=PartitionState.values, description=ONCE),
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class RunPartitionLog(APIView):
    """One partition's log: what its executor logged while it ran (engine.logs)."""

    permission_classes = [capability_required("view")]

    @extend_schema(
        summary="A partition's log (the last 200 lines or 64 KiB of every attempt)",
        description=(
            "What the executor logged on the worker while it ran the partition, every attempt "
            "under a header line, with tracebacks of unexpected errors: the newest "
            "`max_lines` lines within `max_bytes` bytes; `dropped_lines` counts the older "
            "ones let go. `lines` is empty when nothing was logged. Partition indexes count "
            "per stage: `stage` is required when the run has more than one."
        ),
        parameters=[
            OpenApiParameter("stage", str, description=f"A stage id of the run. {ONCE}"),
        ],
        responses={200: PartitionLogSerializer, **ERRORS},
    )
    def get(self, request: Request, pk: int, index: int) -> Response:
        run = get_object_or_404(Run, pk=pk)
        stage_ids = list(run.run_stages.values_list("stage_id", flat=True))
        stage = parameters.choice(request.query_params, "stage", stage_ids)
        if stage is None:
            if len(stage_ids) != 1:
                raise ApiError(
                    "partition indexes count per stage: name one with ?stage=",
                    code=codes.REQUIRED,
                    errors=[
                        {
                            "path": "stage",
                            "code": codes.REQUIRED,
                            "message": f"one of: {', '.join(sorted(stage_ids)) or 'none'}",
                        }
                    ],
                )
            stage = stage_ids[0]
        # A path integer past the column's range matches nothing (and would overflow the
        # driver): not found, never a 500.
        found = (
            Partition.objects.select_related("stage")
            .filter(run=run, stage__stage_id=stage, index=index)
            .first()
            if index <= parameters.INT64_MAX
            else None
        )
        if found is None:
            raise ApiError(
                f"run {run.pk} has no partition {index} in stage {stage}",
                code=codes.NOT_FOUND,
                status_code=status.HTTP_404_NOT_FOUND,
                errors=[{"path": "index", "code": codes.NOT_FOUND, "message": str(index)}],
            )
        return Response(PartitionLogSerializer(selectors.partition_log(found)).data)


def _action_view(
    capability: str,
    action: Any,
    summary: str,
    with_comment: bool,
    body_serializer: type[CommentSerializer] = CommentSerializer,
) -> type[APIView]:
    class ActionView(APIView):
        permission_classes = [capability_required(capability)]

        @extend_schema(
            summary=summary,
            request=body_serializer if with_comment else None,
            responses={200: RunSerializer, 201: RunSerializer, **ERRORS, **CONFLICT},
        )
        def post(self, request: Request, pk: int) -> Response:
            run = get_object_or_404(Run, pk=pk)
            kwargs: dict[str, Any] = {}
            if with_comment:
                body = _object_body(request)
                _refuse_unknown(body, set(body_serializer().fields))
                data = body_serializer(data=body)
                data.is_valid(raise_exception=True)
                kwargs.update(data.validated_data)
            else:
                _refuse_unknown(_object_body(request), set())
            result = action(run=run, actor=request.user, client_ip=client_ip(request), **kwargs)
            code = status.HTTP_201_CREATED if result.pk != run.pk else status.HTTP_200_OK
            return _run_response(result, code)

    ActionView.__name__ = ActionView.__qualname__ = f"Run{summary.split()[0]}View"
    return ActionView


RunApprove = _action_view(
    "approve", services.run_approve, "Approve a dry-run", True, ApproveSerializer
)
RunReject = _action_view("approve", services.run_reject, "Reject a dry-run", True)
RunAbort = _action_view("abort", services.run_abort, "Abort a run", False)
# Pause and resume need hxo:abort (runs_app.policies.may_pause: whoever may stop a run may hold
# it); the run's state does not change, its `paused` field does.
RunPause = _action_view(
    "abort", services.run_pause, "Pause a run: running partitions finish, none starts", False
)
RunResume = _action_view("abort", services.run_resume, "Resume a paused run", False)


class RunThrottle(APIView):
    """Change a running run's live throttle; the next claim obeys it."""

    permission_classes = [capability_required("abort")]

    @extend_schema(
        summary="Throttle a run: concurrency and the least interval between partitions",
        request=ThrottleSerializer,
        responses={200: RunSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request, pk: int) -> Response:
        run = get_object_or_404(Run, pk=pk)
        data = ThrottleSerializer(data=_object_body(request))
        data.is_valid(raise_exception=True)
        run = services.run_throttle(
            run=run, actor=request.user, client_ip=client_ip(request), **data.validated_data
        )
        return _run_response(run)


RunReplay = _action_view(
    "replay", services.run_replay, "Replay failed partitions as a child run", False
)


class RunReceipt(APIView):
    permission_classes = [capability_required("view")]

    @extend_schema(
        summary="Merkle receipt, recomputed from stored results, and each effect checked",
        description=(
            "`verified` is true only when the Merkle roots recomputed from the stored results "
            "match the recorded ones (`merkle_verified`) and every effect an apply recorded "
            "is still there (`effects`). `?thorough=1` hashes every stored file again instead "
            "of trusting files whose stat identity is unchanged since they were written."
        ),
        parameters=[
            OpenApiParameter("thorough", str, enum=["0", "1"], description="1: hash every byte")
        ],
        responses={200: ReceiptSerializer, **ERRORS},
    )
    def get(self, request: Request, pk: int) -> Response:
        thorough = parameters.choice(request.query_params, "thorough", ("0", "1")) == "1"
        run = get_object_or_404(Run, pk=pk)
        return Response(selectors.receipt(run, thorough=thorough))


class RunDiff(APIView):
    permission_classes = [capability_required("view")]

    @extend_schema(
        summary="Manifest and result diff of two runs",
        parameters=[OpenApiParameter("against", int, required=True)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request: Request, pk: int) -> Response:
        run = get_object_or_404(Run, pk=pk)
        against = parameters.one(request.query_params, "against")
        if against is None:
            raise ApiError(
                "name the other run: ?against=<run id>",
                code=codes.REQUIRED,
                errors=[{"path": "against", "code": codes.REQUIRED, "message": "a run id"}],
            )
        other = get_object_or_404(Run, pk=parameters.parse_id(against, name="against"))
        return Response(selectors.diff_runs(run, other))


class AuditList(generics.ListAPIView):
    serializer_class = AuditEventSerializer
    pagination_class = AuditPagination
    permission_classes = [capability_required("audit")]

    def get_queryset(self) -> QuerySet[AuditEvent]:
        params = self.request.query_params
        filters = {
            keyword: parameters.text(params, name, max_length=_max_length(AuditEvent, field))
            for name, keyword, field in AUDIT_FILTERS
        }
        return selectors.audit_events(**filters)

    @extend_schema(
        summary="Audit events",
        parameters=[
            OpenApiParameter("user", str, description=f"A username, matched exactly. {ONCE}"),
            OpenApiParameter("action", str, description=f"Actions starting with this. {ONCE}"),
            OpenApiParameter("object_type", str, description=ONCE),
            OpenApiParameter("object_id", str, description=ONCE),
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


# (query parameter, selectors.audit_events keyword, the AuditEvent field bounding its length);
# how each value matches is the selector's, shared with the dashboard's audit page.
AUDIT_FILTERS = (
    ("user", "actor", "actor_name"),
    ("action", "action", "action"),
    ("object_type", "object_type", "object_type"),
    ("object_id", "object_id", "object_id"),
)


def _max_length(model: Any, field: str) -> int:
    return model._meta.get_field(field).max_length
