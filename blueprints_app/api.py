"""REST API v1 of the registry: job kinds, code components and the validate endpoint."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from blueprints_app.models import JobKind, JobKindVersion
from blueprints_app.registry import EXECUTORS, PARTITIONERS
from blueprints_app.serializers import (
    ExecutorSerializer,
    JobKindSerializer,
    JobKindVersionSerializer,
    JobKindVersionUpdateSerializer,
    PartitionerSerializer,
    ValidateRequestSerializer,
    ValidationResultSerializer,
    validation_error,
)
from blueprints_app.services import JobKindInvalid, job_kind_delete, job_kind_version_update
from blueprints_app.validation import validate_plan, validate_stage
from blueprints_app.versions import component_lifecycle
from hxo_site import codes, parameters
from hxo_site.errors import ApiError
from hxo_site.net import client_ip
from hxo_site.permissions import RegistryAdmin, capability_required
from hxo_site.serializers import ErrorSerializer

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid request; see `errors`"),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated"),
    403: OpenApiResponse(ErrorSerializer, description="Missing capability"),
}
READ_ERRORS = {k: v for k, v in ERRORS.items() if k != 400}


@extend_schema_view(
    list=extend_schema(summary="List job kinds", responses={200: JobKindSerializer, **READ_ERRORS}),
    retrieve=extend_schema(
        summary="One job kind by name (e.g. deploy.pack)",
        responses={200: JobKindSerializer, 404: ErrorSerializer, **READ_ERRORS},
    ),
    create=extend_schema(
        summary="Add a job kind (registry admins)", responses={201: JobKindSerializer, **ERRORS}
    ),
    update=extend_schema(
        summary="Replace a job kind (registry admins)",
        responses={200: JobKindSerializer, 404: ErrorSerializer, **ERRORS},
    ),
    partial_update=extend_schema(
        summary="Change a job kind (registry admins)",
        responses={200: JobKindSerializer, 404: ErrorSerializer, **ERRORS},
    ),
    destroy=extend_schema(
        summary="Remove a job kind (registry admins)",
        responses={204: None, 404: ErrorSerializer, **READ_ERRORS},
    ),
)
class JobKindViewSet(viewsets.ModelViewSet):
    """The job-kind registry. Reads need `hxo:view`; writes are for registry admins."""

    queryset = JobKind.objects.all()
    serializer_class = JobKindSerializer
    lookup_field = "kind"
    # Kind names hold dots (deploy.pack).
    lookup_value_regex = r"[^/]+"

    def get_permissions(self) -> list[BasePermission]:
        if self.request is not None and self.request.method in ("GET", "HEAD", "OPTIONS"):
            return [capability_required("view")()]
        return [RegistryAdmin()]

    def perform_destroy(self, instance: JobKind) -> None:
        job_kind_delete(
            job_kind=instance,
            user=self.request.user,
            via="api",
            client_ip=client_ip(self.request),
        )

    @extend_schema(
        summary="Versions of a job kind, oldest first, the current one included",
        responses={200: JobKindVersionSerializer(many=True), 404: ErrorSerializer, **READ_ERRORS},
    )
    @action(detail=True, methods=["get"], url_path="versions")
    def versions(self, request: Request, kind: str) -> Response:
        """Paginated like every list (`count`, `next`, `previous`, `results`; issue 15 §7:
        it was a bare list although the API contract says lists paginate)."""
        job_kind = self.get_object()
        rows = (
            JobKindVersion.objects.filter(kind=job_kind.kind)
            .select_related("created_by")
            .order_by("version")
        )
        context = {"current_version": job_kind.version}
        page = self.paginate_queryset(rows)
        data = JobKindVersionSerializer(page, many=True, context=context).data
        return self.get_paginated_response(data)

    @extend_schema(
        methods=["GET"],
        summary="One version of a job kind",
        responses={200: JobKindVersionSerializer, 404: ErrorSerializer, **READ_ERRORS},
    )
    @extend_schema(
        methods=["PATCH"],
        summary="Sunset an older version, or declare how plans migrate off it (registry admins)",
        request=JobKindVersionUpdateSerializer,
        responses={200: JobKindVersionSerializer, 404: ErrorSerializer, **ERRORS},
    )
    @action(detail=True, methods=["get", "patch"], url_path=r"versions/(?P<version>[0-9]+)")
    def version(self, request: Request, kind: str, version: str) -> Response:
        job_kind = self.get_object()
        try:  # the route takes [0-9]+: past what a column holds is no version, not a 500
            number = parameters.parse_id(version, name="version")
        except parameters.ParameterError:
            raise Http404 from None
        row = get_object_or_404(JobKindVersion, kind=job_kind.kind, version=number)
        if request.method == "PATCH":
            body = request.data if isinstance(request.data, dict) else None
            unknown = sorted(set(body or {}) - {"sunset_at", "migration"})
            if body is None or unknown:
                raise ApiError(
                    'The body is {"sunset_at"?, "migration"?}.',
                    code=codes.UNKNOWN_FIELD if unknown else codes.INVALID_TYPE,
                    errors=[
                        {"path": k, "code": codes.UNKNOWN_FIELD, "message": "unknown field"}
                        for k in unknown
                    ],
                )
            data = JobKindVersionUpdateSerializer(data=body)
            data.is_valid(raise_exception=True)
            try:
                row = job_kind_version_update(
                    row=row,
                    user=request.user,
                    via="api",
                    client_ip=client_ip(request),
                    **data.validated_data,
                )
            except JobKindInvalid as exc:
                raise validation_error(exc.result) from None
        context = {"current_version": job_kind.version}
        return Response(JobKindVersionSerializer(row, context=context).data)


def _lifecycle(cls: type) -> dict[str, Any]:
    life = component_lifecycle(cls)
    return {
        "deprecated": life.deprecated,
        "sunset_at": life.sunset_at,
        "replaced_by": life.replaced_by,
    }


def _partitioner_rows() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "description": cls.description,
            "params_schema": cls.get_params_schema(),
            "inputs_schema": cls.inputs_schema,
            **_lifecycle(cls),
        }
        for name, cls in sorted(PARTITIONERS.items())
    ]


def _executor_rows() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "description": cls.description,
            "idempotent": cls.idempotent,
            "supports_dry_run": cls.supports_dry_run,
            "inputs_schema": cls.inputs_schema,
            "output_schema": cls.output_schema,
            **_lifecycle(cls),
        }
        for name, cls in sorted(EXECUTORS.items())
    ]


@extend_schema(
    summary="Registered partitioners", responses={200: PartitionerSerializer, **READ_ERRORS}
)
class PartitionerList(generics.ListAPIView):
    """Partitioners of the code registry, with the JSON Schema of the params they accept."""

    serializer_class = PartitionerSerializer
    permission_classes = [capability_required("view")]

    def get_queryset(self) -> list[dict[str, Any]]:
        return _partitioner_rows()


@extend_schema(summary="Registered executors", responses={200: ExecutorSerializer, **READ_ERRORS})
class ExecutorList(generics.ListAPIView):
    """Executors of the code registry, with their idempotency and dry-run support."""

    serializer_class = ExecutorSerializer
    permission_classes = [capability_required("view")]

    def get_queryset(self) -> list[dict[str, Any]]:
        return _executor_rows()


class ValidateView(APIView):
    """Validate a stage or a whole plan against the registry, for the requesting user.

    Nothing is stored. A non-idempotent stage is an error (`force_merge_required`) for a user
    without `hxo:force-merge`, as it would be at submit.
    """

    permission_classes = [capability_required("view")]

    @extend_schema(
        summary="Validate a stage or a plan",
        request=ValidateRequestSerializer,
        responses={200: ValidationResultSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        body = request.data
        keys = set(body) & {"stage", "plan"} if isinstance(body, dict) else set()
        if not isinstance(body, dict) or len(keys) != 1 or set(body) - keys:
            raise ApiError(
                'The body must be {"stage": {...}} or {"plan": {...}}.',
                code=codes.VALIDATION_FAILED,
                errors=[
                    {
                        "path": "",
                        "code": codes.REQUIRED,
                        "message": 'exactly one of "stage" or "plan" is required',
                    }
                ],
            )
        if "stage" in keys:
            result = validate_stage(body["stage"], user=request.user)
        else:
            result = validate_plan(body["plan"], user=request.user)
        return Response(result.as_dict(), status=status.HTTP_200_OK)
