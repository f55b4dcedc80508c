"""The REST API v1 seen from a client: one `requests` session, errors as `ApiFailure`.

The server answers every error with one shape, `{"detail", "code", "errors": [{"path",
"code", "message"}]}` plus extra keys (a `diff`...); `ApiFailure` carries it, so the command
line prints the code and the field paths instead of a traceback. A failure without an HTTP
answer (refused connection, timeout, DNS) has `status` None.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

USER_AGENT = "hxo-cli/0.1.0"
# A CI job may run on a slow network, but a hung server must not hold it forever.
DEFAULT_HTTP_TIMEOUT_S = 30.0
UNREACHABLE = "unreachable"
NOT_JSON = "not_json"


class ApiFailure(Exception):
    """A request that did not succeed.

    `status` is the HTTP status (None when no answer came), `code` the server's error code
    (or `unreachable`, `not_json`, `http_<status>` when the answer had none), `detail` its
    message, `errors` the per-field problems, `extra` any other keys of the error body.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.extra = extra or {}


def normalise_base_url(url: str) -> str:
    """The site's root URL from what a user typed: `http(s)://host[:port][/prefix]`, with no
    trailing slash and no trailing `/api/v1` (both spellings are accepted).

    Raises ValueError for anything that is not an absolute http(s) URL.
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL (for example http://127.0.0.1:8000)")
    text = text.rstrip("/")
    for suffix in ("/api/v1", "/api"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return text


class Api:
    """A client of one HXO server, authenticated by an API token (`Authorization: Token`)."""

    def __init__(
        self, base_url: str, token: str, *, timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Token {token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
        )

    def url(self, path: str) -> str:
        """The absolute URL of an API path (`runs/5/` → `<base>/api/v1/runs/5/`)."""
        return f"{self.base_url}/api/v1/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        absolute: bool = False,
    ) -> Any:
        """Send one request; the decoded JSON body of a 2xx answer (None when empty).

        Raises ApiFailure for any other status, an answer that is not JSON, or no answer.
        """
        url = path if absolute else self.url(path)
        try:
            response = self.session.request(
                method,
                url,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=headers,
                timeout=self.timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ApiFailure(None, UNREACHABLE, f"cannot reach {self.base_url}: {exc}") from None
        if 200 <= response.status_code < 300:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise ApiFailure(
                    response.status_code,
                    NOT_JSON,
                    f"{method} {url} answered {response.status_code} without JSON "
                    f"(is {self.base_url} an HXO server?)",
                ) from None
        raise _failure(response)

    def get(self, path: str, **params: Any) -> Any:
        """GET an API path with query parameters (None values are left out)."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None) -> Any:
        """POST a JSON body (`{}` when None: the API reads no body as no fields)."""
        return self.request("POST", path, body={} if body is None else body, headers=headers)

    def put(self, path: str, body: Any) -> Any:
        """PUT a JSON body."""
        return self.request("PUT", path, body=body)

    def pages(self, path: str, *, limit: int | None = None, **params: Any) -> Iterator[Any]:
        """The items of a paginated list (`{"count", "next", "results"}`), page after page,
        at most `limit` of them; a list answered unpaginated is iterated as is."""
        answer = self.get(path, **params)
        seen = 0
        while True:
            items = answer.get("results", []) if isinstance(answer, dict) else answer
            for item in items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            nxt = answer.get("next") if isinstance(answer, dict) else None
            if not nxt:
                return
            # `next` is absolute; keep our own origin (a proxy may rewrite the host it sees).
            parts = urlsplit(nxt)
            target = urljoin(self.base_url + "/", parts.path.lstrip("/"))
            if parts.query:
                target += "?" + parts.query
            answer = self.request("GET", target, absolute=True)


def _failure(response: requests.Response) -> ApiFailure:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("code" in body or "detail" in body):
        extra = {k: v for k, v in body.items() if k not in ("detail", "code", "errors")}
        errors = body.get("errors") if isinstance(body.get("errors"), list) else []
        return ApiFailure(
            status,
            str(body.get("code") or f"http_{status}"),
            str(body.get("detail") or ""),
            [e for e in errors if isinstance(e, dict)],
            extra,
        )
    text = response.text.strip().replace("\n", " ")
    snippet = (text[:200] + "…") if len(text) > 200 else text
    if body is not None:
        snippet = json.dumps(body)[:200]
    return ApiFailure(status, f"http_{status}", f"HTTP {status} {response.reason}: {snippet}")
