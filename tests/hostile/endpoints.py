"""The API's endpoints as the URL resolver knows them, the capability each needs
(README.md, "REST API v1"), and a URL and plausible body for each, aimed at the plan and
runs of tests/hostile/conftest.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver, reverse

from blueprints_app.models import JobKind
from hxo_site.capabilities import ROLES
from tests.runs_app.testkinds import TEST_KIND_NOAPPROVAL

PUBLIC = "public"
REGISTRY = "registry admin"

# README.md, "REST API v1": the capability each endpoint needs, by URL name and method.
CAPABILITY: dict[tuple[str, str], str] = {
    ("job-kind-list", "GET"): "view",
    ("job-kind-list", "POST"): REGISTRY,
    ("job-kind-detail", "GET"): "view",
    ("job-kind-detail", "PUT"): REGISTRY,
    ("job-kind-detail", "PATCH"): REGISTRY,
    ("job-kind-detail", "DELETE"): REGISTRY,
    ("job-kind-versions", "GET"): "view",
    ("job-kind-version", "GET"): "view",
    ("job-kind-version", "PATCH"): REGISTRY,
    ("partitioner-list", "GET"): "view",
    ("executor-list", "GET"): "view",
    ("validate", "POST"): "view",
    ("auth-token", "POST"): PUBLIC,
    ("plan-list", "GET"): "view",
    ("plan-list", "POST"): "plan",
    ("plan-detail", "GET"): "view",
    ("plan-detail", "PUT"): "plan",
    ("plan-detail", "PATCH"): "plan",
    ("plan-revisions", "GET"): "view",
    ("plan-dry-run", "POST"): "submit",
    ("plan-apply", "POST"): "submit",
    ("plan-migrate", "POST"): "plan",
    ("run-list", "GET"): "view",
    ("run-detail", "GET"): "view",
    ("run-partitions", "GET"): "view",
    ("run-approve", "POST"): "approve",
    ("run-reject", "POST"): "approve",
    ("run-abort", "POST"): "abort",
    ("run-replay", "POST"): "replay",
    # Pausing or slowing a run is milder than aborting it: the same capability.
    ("run-pause", "POST"): "abort",
    ("run-resume", "POST"): "abort",
    ("run-throttle", "POST"): "abort",
    ("run-partition-log", "GET"): "view",
    ("run-receipt", "GET"): "view",
    ("run-diff", "GET"): "view",
    ("audit-list", "GET"): "audit",
    ("search-assets", "GET"): "view",
    ("search-docs", "GET"): "view",
    ("api-schema", "GET"): PUBLIC,
    ("api-docs", "GET"): PUBLIC,
}

CAST = ("admiral", "operator", "approver", "viewer", "nobody")


def holds(role: str, capability: str) -> bool:
    if capability == REGISTRY:
        return role == "admiral"  # staff with the JobKind change permission
    return capability in ROLES.get(role, [])


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    params: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} {self.name}"


def _methods(callback: Any) -> list[str]:
    actions = getattr(callback, "actions", None)
    if actions:  # a viewset route: method → action
        return sorted(m.upper() for m in actions)
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if cls is None:
        return ["GET"]
    return sorted(
        m.upper()
        for m in cls.http_method_names
        if m not in ("options", "head", "trace") and hasattr(cls, m)
    )


def _params(pattern: Any) -> tuple[str, ...]:
    converters = getattr(pattern, "converters", None)
    if converters:
        return tuple(converters)
    regex = getattr(pattern, "regex", None)
    return tuple(regex.groupindex) if regex is not None else ()


def _walk(
    patterns: list[Any], prefix: str = "", params: tuple[str, ...] = ()
) -> Iterator[tuple[str, URLPattern, tuple[str, ...]]]:
    for entry in patterns:
        route = prefix + str(entry.pattern)
        found = params + _params(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, route, found)
        else:
            yield route, entry, found


def api_endpoints() -> list[Endpoint]:
    endpoints = []
    for route, pattern, params in _walk(get_resolver().url_patterns):
        if not route.lstrip("^").startswith("api/"):
            continue
        assert pattern.name, f"API route {route!r} has no name"
        for method in _methods(pattern.callback):
            endpoints.append(Endpoint(pattern.name, method, params))
    return endpoints


ENDPOINTS = api_endpoints()
UNSAFE = [e for e in ENDPOINTS if e.method not in ("GET", "HEAD", "OPTIONS")]


def body_for(endpoint: Endpoint, ctx: dict[str, Any]) -> dict[str, Any] | None:
    """A plausible body: the request would pass if only the capability were there."""
    name = endpoint.name
    if endpoint.method in ("GET", "DELETE"):
        return None
    if name == "job-kind-version":
        return {"sunset_at": None}
    if name == "plan-migrate":
        return {"dry_run": True}
    if name.startswith("job-kind"):
        return {
            "kind": "hostile.kind",
            "description": "x",
            "partitioners": ["test_items"],
            "executors": ["test_append"],
        }
    if name in ("plan-list", "plan-detail"):
        return ctx["plan_document"]
    if name == "validate":
        return {"plan": ctx["plan_document"]}
    if name == "plan-apply":
        return {"dry_run": ctx["dry_run"].pk}
    if name in ("run-approve", "run-reject"):
        return {"comment": "looks fine"}
    if name == "auth-token":
        return {"username": "nobody-here", "password": "x"}
    return {}


def url_for(endpoint: Endpoint, ctx: dict[str, Any]) -> str:
    kwargs: dict[str, Any] = {}
    for param in endpoint.params:
        if param == "kind":
            kwargs[param] = TEST_KIND_NOAPPROVAL
        elif param == "version":
            kwargs[param] = JobKind.objects.get(kind=TEST_KIND_NOAPPROVAL).version
        elif param == "index":
            kwargs[param] = 0
        elif endpoint.name.startswith("plan-"):
            kwargs[param] = ctx["plan"].pk
        elif endpoint.name in ("run-approve", "run-reject"):
            kwargs[param] = ctx["dry_run"].pk
        else:
            kwargs[param] = ctx["applied"].pk
    url = reverse(endpoint.name, kwargs=kwargs)
    if endpoint.name == "run-diff":
        url += f"?against={ctx['dry_run'].pk}"
    elif endpoint.name.startswith("search-"):
        url += "?q=hello"
    return url


def send(client: Any, endpoint: Endpoint, url: str, body: dict[str, Any] | None) -> Any:
    method = getattr(client, endpoint.method.lower())
    return method(url, body, format="json") if body is not None else method(url)
