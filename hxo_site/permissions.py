"""DRF permission classes for HXO's capabilities, shared by every API module.

`capability_required("view")` is a permission class that lets a request through when its user
holds `hxo:view`; `RegistryAdmin` lets registry admins (staff with the JobKind change
permission) through. Both answer anonymous requests with 401 `not_authenticated` (DRF asks the
authenticators for a challenge) and everyone else with 403 `permission_denied`.
"""

from __future__ import annotations

import functools
from typing import Any

from rest_framework.permissions import BasePermission

from hxo_site import codes
from hxo_site.capabilities import CAPABILITIES, can_edit_registry, has_capability


@functools.cache
def capability_required(capability: str) -> type[BasePermission]:
    """A permission class for `hxo:<capability>`; one class per capability (cached)."""
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}")

    class HasCapability(BasePermission):
        message = f"This needs the hxo:{capability} capability."
        code = codes.PERMISSION_DENIED

        def has_permission(self, request: Any, view: Any) -> bool:
            return has_capability(request.user, capability)

    HasCapability.__name__ = HasCapability.__qualname__ = f"HasCapability[{capability}]"
    return HasCapability


class RegistryAdmin(BasePermission):
    """Registry writes: staff holding the JobKind change permission (the admin's rule too)."""

    message = "Only registry admins may change the job-kind registry."
    code = codes.PERMISSION_DENIED

    def has_permission(self, request: Any, view: Any) -> bool:
        return can_edit_registry(request.user)
