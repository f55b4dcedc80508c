"""Serializers every API module shares: strict JSON field types, a strict request body, and
the API's one error shape (`ErrorSerializer`, what `hxo_site.api_errors` answers)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from hxo_site import codes

# --- Strict JSON types ------------------------------------------------------------------------
# DRF's fields coerce: BooleanField reads "yes", "on", 1 as true; IntegerField reads "7", 7.0
# and "٣" as ints; CharField reads 5 as "5". A request body is JSON, so a field takes its own
# JSON type only, and anything else is a 400 `invalid_type` naming the field.

TYPE_MESSAGES = {"bool": "must be true or false", "int": "must be a whole number (JSON)"}


class StrictBooleanField(serializers.BooleanField):
    """JSON `true`/`false` only."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError(TYPE_MESSAGES["bool"], code=codes.INVALID_TYPE)
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only (not a bool, a float or a string); the bounds still apply."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError(TYPE_MESSAGES["int"], code=codes.INVALID_TYPE)
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string only."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string", code=codes.INVALID_TYPE)
        return super().to_internal_value(data)


class StrictBodySerializer(serializers.Serializer):
    """A request body: a JSON object (400 `invalid_type` otherwise) with only the declared
    fields (400 `unknown_field` on each other one)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"": [ErrorDetail("the body must be a JSON object", code=codes.INVALID_TYPE)]}
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {k: [ErrorDetail("unknown field", code=codes.UNKNOWN_FIELD)] for k in unknown}
            )
        return super().to_internal_value(data)


class IssueSerializer(serializers.Serializer):
    path = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """The API's one error shape (`hxo_site.api_errors`)."""

    detail = serializers.CharField()
    code = serializers.CharField()
    errors = IssueSerializer(many=True)
