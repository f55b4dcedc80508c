"""`GET /metrics`: HXO's metrics for Prometheus (runs_app.metrics), behind
`hxo_site.metrics_access` (a bearer token or an allowed address)."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from hxo_site.metrics_access import FORBIDDEN, OFF, metrics_access
from runs_app import metrics as hxo_metrics

REFUSED = (
    "forbidden: send Authorization: Bearer <HXO_METRICS_TOKEN>, "
    "or scrape from an address in HXO_METRICS_ALLOWED_IPS\n"
)


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics in the format `Accept` asks for (OpenMetrics, or Prometheus text 0.0.4);
    404 while neither a token nor addresses are configured, 403 to anyone else, 405 for
    another method than GET or HEAD."""
    access = metrics_access(request)
    if access == OFF:
        raise Http404("metrics are off")
    if access == FORBIDDEN:
        return HttpResponse(REFUSED, status=403, content_type="text/plain; charset=utf-8")
    body, content_type = hxo_metrics.exposition(request.headers.get("Accept", ""))
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
