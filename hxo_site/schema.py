"""The OpenAPI document tells the whole truth about errors.

Every operation can be refused in ways its view never mentions: a body that is not JSON
(400, 413, 415, from hxo_site.middleware), no or a bad token (401), a missing capability
(403), an object or a page that does not exist (404), a throttle (429). `HxoAutoSchema` adds
those answers, in the API's one error shape, to every operation that can give them and does
not already document them, so that clients (and schemathesis in the tests) can rely on the
document.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


class HxoAutoSchema(AutoSchema):
    def _implied_errors(self) -> dict[str, str]:
        errors = {"400": "Invalid request or query; see `errors`"}
        permissions = getattr(self.view, "permission_classes", None) or []
        public = bool(permissions) and all(p is AllowAny for p in permissions)
        if not public:
            errors["401"] = "Not authenticated, or the token expired (`token_expired`)"
            errors["403"] = "Missing capability (`permission_denied`)"
        if "{" in self.path or self._is_list_view() or self._takes_a_page():
            errors["404"] = "No such object, or no such page of a list (`not_found`)"
        if self.method in UNSAFE:
            errors["413"] = "Body larger than HXO_MAX_BODY_BYTES (`body_too_large`)"
            errors["415"] = "Body that is not JSON (`unsupported_media_type`)"
        if getattr(self.view, "throttle_classes", None):
            errors["429"] = "Too many requests (`throttled`, `login_throttled`)"
        return errors

    def _takes_a_page(self) -> bool:
        # Views that paginate by hand (search) declare `page`; a page past the end is a 404.
        return any(p.get("name") == "page" for p in self._get_parameters())

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        from hxo_site.serializers import ErrorSerializer

        responses = super()._get_response_bodies(direction)
        for code, description in self._implied_errors().items():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=description),
                    code,
                    direction=direction,
                )
        return responses
