"""Template helpers of the dashboard: navigation, formatting, and server-side SVG (the Gantt
timeline and the stacked progress bars) drawn with classes, never style attributes, so that a
`style-src 'self'` CSP holds."""

from __future__ import annotations

import json
import math
from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from blueprints_app.registry import describe_weight
from hxo_site.capabilities import has_capability, user_role
from runs_app import graph, markup
from runs_app.policies import runs_to_decide

register = template.Library()

# url name prefix → nav section
SECTIONS = {
    "plan": "plans",
    "run": "runs",
    "partition": "runs",
    "approvals": "approvals",
    "kind": "kinds",
    "search": "search",
    "audit": "audit",
    "home": "home",
}


@register.simple_tag(takes_context=True)
def hxo_nav(context: template.Context) -> dict[str, Any]:
    """The navigation a user may use, the active section, the user's role."""
    request = context["request"]
    user = request.user
    if not user.is_authenticated:
        return {"items": [], "role": "", "user": None}
    name = getattr(request.resolver_match, "url_name", "") or ""
    active = next((v for k, v in SECTIONS.items() if name.startswith(k)), "")
    view = has_capability(user, "view")
    approve = has_capability(user, "approve")
    items = []
    for key, label, url, allowed in (
        ("plans", "Plans", "plans", view),
        ("runs", "Runs", "runs", view),
        ("approvals", "Approvals", "approvals", approve),
        ("kinds", "Job kinds", "kinds", view),
        ("search", "Search", "search", view),
        ("audit", "Audit", "audit", has_capability(user, "audit")),
    ):
        if allowed:
            items.append({"key": key, "label": label, "url": reverse(url), "active": key == active})
    if approve:
        # How many dry-runs wait for this user: the inbox's own list.
        waiting = len(runs_to_decide(user)[0])
        for item in items:
            if item["key"] == "approvals":
                item["badge"] = waiting
    if user.is_staff:
        items.append(
            {"key": "admin", "label": "Admin", "url": reverse("admin:index"), "active": False}
        )
    items.append({"key": "api", "label": "API docs", "url": reverse("api-docs"), "active": False})
    return {"items": items, "role": user_role(user), "user": user}


# --- Formatting ------------------------------------------------------------------------------


@register.filter
def duration(ms: Any) -> str:
    """Milliseconds as a short human duration: 850 ms, 4.2 s, 3 min 05 s, 2 h 04 min."""
    if ms is None or ms == "":
        return "\u2013"
    try:
        ms = int(ms)
    except (TypeError, ValueError):
        return ""
    if ms < 1000:
        return f"{ms} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


@register.filter
def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@register.filter
def short(value: Any, n: int = 12) -> str:
    return str(value or "")[: int(n)]


@register.filter
def weight(value: Any, partitioner: str = "") -> str:
    """A stage's or partition's weight as its partitioner describes it
    (`Partitioner.describe_weight`: bytes unless the partitioner says otherwise); a plain
    number when no partitioner is named. A stage's own label, which knows its params, is
    `selectors.stage_progress(...)["weight_label"]`."""
    return describe_weight(partitioner, value)


@register.filter
def get(mapping: Any, key: Any) -> Any:
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def plus1(value: Any) -> int:
    return int(value) + 1


# --- SVG: stacked progress bar -----------------------------------------------------------------

BAR_ORDER = ("succeeded", "reused", "failed", "cancelled", "running", "pending")


@register.simple_tag
def stacked_bar(counts: dict[str, int], label: str = "") -> SafeString:
    """Counts by state as one bar of coloured segments; its text alternative lists them."""
    total = counts.get("total") or sum(counts.get(k, 0) for k in BAR_ORDER)
    parts = [f"{counts.get(k, 0)} {k}" for k in BAR_ORDER if counts.get(k)]
    alt = f"{label}: " if label else ""
    alt += ", ".join(parts) if parts else "no partitions"
    width = 1000
    x = 0.0
    rects = []
    for key in BAR_ORDER:
        n = counts.get(key, 0)
        if not n or not total:
            continue
        w = width * n / total
        rects.append(
            format_html(
                '<rect class="seg seg-{}" x="{}" y="0" width="{}" height="12">'
                "<title>{} {}</title></rect>",
                key,
                f"{x:.2f}",
                f"{w:.2f}",
                n,
                key,
            )
        )
        x += w
    return format_html(
        '<svg class="stacked" viewBox="0 0 {} 12" preserveAspectRatio="none" role="img" '
        'aria-label="{}"><rect class="seg-track" x="0" y="0" width="{}" height="12"></rect>'
        "{}</svg>",
        width,
        alt,
        width,
        mark_safe("".join(rects)),  # pieces made by format_html
    )


# --- SVG: the Gantt timeline -------------------------------------------------------------------

G_WIDTH = 1000
G_LABEL = 170
G_AXIS = 26
G_LANE = 12
G_GAP = 3
G_HEAD = 20
G_MAX_LANES = 12


def _nice_step(span_ms: int, ticks: int = 8) -> int:
    raw = max(span_ms / ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return int(m * power)
    return int(10 * power)


def _lanes(bars: list[Any]) -> list[int]:
    """Greedy interval packing: each bar goes to the first lane free at its start."""
    ends: list[int] = []
    out = []
    for bar in bars:
        for i, end in enumerate(ends):
            if end <= bar.start_ms:
                ends[i] = bar.end_ms
                out.append(i)
                break
        else:
            if len(ends) < G_MAX_LANES:
                ends.append(bar.end_ms)
                out.append(len(ends) - 1)
            else:
                i = min(range(len(ends)), key=lambda j: ends[j])
                ends[i] = max(ends[i], bar.end_ms)
                out.append(i)
    return out


@register.simple_tag
def gantt(timeline: Any, label: str = "Timeline of partitions per stage") -> SafeString:
    fmt = duration
    span = max(int(timeline.span_ms), 1)
    plot = G_WIDTH - G_LABEL - 10

    def x(ms: int) -> float:
        return G_LABEL + plot * min(max(ms, 0), span) / span

    parts: list[str] = []
    y = G_AXIS
    step = _nice_step(span)
    axis = []
    for t in range(0, span + 1, step):
        axis.append(
            format_html(
                '<line class="g-grid" x1="{0}" x2="{0}" y1="{1}" y2="{{H}}"></line>'
                '<text class="g-tick" x="{0}" y="{2}">{3}</text>',
                f"{x(t):.1f}",
                G_AXIS - 6,
                G_AXIS - 10,
                fmt(t) if t else "0",
            )
        )
    for stage in timeline.stages:
        ordered = sorted(stage.bars, key=lambda b: (b.start_ms, b.index))
        lanes = _lanes(ordered)
        lane_count = max(lanes, default=-1) + 1
        parts.append(
            format_html('<text class="g-stage" x="0" y="{}">{}</text>', y + 13, stage.stage_id[:24])
        )
        caption = f"{stage.total} partitions"
        if stage.sampled:
            caption = f"every {stage.step}th of {stage.total}"
        parts.append(format_html('<text class="g-caption" x="0" y="{}">{}</text>', y + 26, caption))
        if stage.start_ms is not None:
            end = stage.end_ms if stage.end_ms is not None else span
            parts.append(
                format_html(
                    '<rect class="g-span g-{}" x="{}" y="{}" width="{}" height="6" rx="2">'
                    "<title>{}: {} ({})</title></rect>",
                    stage.state,
                    f"{x(stage.start_ms):.1f}",
                    y + 4,
                    f"{max(x(end) - x(stage.start_ms), 1.5):.1f}",
                    stage.stage_id,
                    stage.state,
                    fmt(end - stage.start_ms),
                )
            )
            slo_at = stage.start_ms + stage.slo_ms
            if slo_at <= span:
                parts.append(
                    format_html(
                        '<line class="g-slo" x1="{0}" x2="{0}" y1="{1}" y2="{2}">'
                        "<title>SLO of {3}: {4}</title></line>",
                        f"{x(slo_at):.1f}",
                        y,
                        y + G_HEAD + max(lane_count, 1) * (G_LANE + G_GAP),
                        stage.stage_id,
                        fmt(stage.slo_ms),
                    )
                )
        row_y = y + G_HEAD
        for bar, lane in zip(ordered, lanes, strict=True):
            by = row_y + lane * (G_LANE + G_GAP)
            width = max(x(bar.end_ms) - x(bar.start_ms), 1.5)
            label_text = f"{stage.stage_id} #{bar.index}"
            if bar.label:
                label_text += f" · {bar.label[:80]}"
            parts.append(
                format_html(
                    '<rect class="g-bar g-{}" x="{}" y="{}" width="{}" height="{}" rx="1.5">'
                    "<title>{}: {}, {} (attempt {})</title></rect>",
                    bar.state,
                    f"{x(bar.start_ms):.1f}",
                    by,
                    f"{width:.1f}",
                    G_LANE,
                    label_text,
                    bar.state,
                    fmt(bar.end_ms - bar.start_ms),
                    bar.attempts,
                )
            )
        y = row_y + max(lane_count, 1) * (G_LANE + G_GAP) + 14
    height = y + 4
    axis_svg = "".join(axis).replace("{H}", str(height))
    return format_html(
        '<svg class="gantt" viewBox="0 0 {} {}" role="img" aria-labelledby="gantt-title">'
        '<title id="gantt-title">{}</title>{}{}</svg>',
        G_WIDTH,
        height,
        label,
        mark_safe(axis_svg),  # made by format_html
        mark_safe("".join(parts)),
    )


# --- The stage graph, the history grid, Markdown -----------------------------------------------


@register.simple_tag
def stage_graph(stages: Any, label: str = "Stage graph", dom_id: str = "stage-graph") -> SafeString:
    """`stages` (mappings with id, depends_on, state; a run page's `progress` items fit) as
    the SVG stage graph of `runs_app.graph`."""
    return graph.render_svg(stages or [], label=label, dom_id=dom_id)


@register.filter
def editor_stages(form: Any) -> list[dict[str, Any]]:
    """The editor's stages as the stage graph draws them: "has errors" when a stage's fields
    or the stage itself carry an error, else "planned"."""
    return [
        {
            "id": s.stage.get("id") or "",
            "depends_on": s.stage.get("depends_on") or [],
            "state": "invalid" if s.error_count else "planned",
        }
        for s in form.stages
    ]


# A glyph per state so that a grid cell is legible without its colour.
STATE_GLYPHS = {
    "succeeded": "\u2713",
    "failed": "\u2715",
    "cancelled": "\u2298",
    "running": "\u25b6",
    "pending": "\u2026",
    "partitioning": "\u2026",
    "aborted": "\u2298",
    "awaiting_approval": "?",
    "approved": "\u2713",
    "rejected": "\u2715",
}


@register.filter
def state_glyph(state: str | None) -> str:
    return STATE_GLYPHS.get(state or "", "\u2013")


@register.filter
def markdown(text: str | None) -> SafeString:
    """A plan description as safe HTML (`runs_app.markup.render_markdown`)."""
    return markup.render_markdown(text)


@register.filter
def markdown_summary(text: str | None, chars: int = 90) -> SafeString:
    """The first paragraph of a description, inline and cut to `chars` characters."""
    return markup.render_summary(text, int(chars))
