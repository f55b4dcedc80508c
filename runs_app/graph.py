"""The stage graph: a plan's or a run's stages as a server-rendered SVG.

Stages are nodes, `depends_on` are edges, and waves (topological levels: a stage's wave is one
more than its deepest dependency's) run left to right, as in Airflow's Graph view. The picture
is drawn with classes only (`gnode-<state>`, `gedge`), never `style` attributes, so the site's
`style-src 'self'` CSP holds and every colour lives in `static/css/hxo.css`. Each node says its
state in text as well as by colour, and its full id, state and dependencies in a `<title>`
tooltip (long ids are truncated in the box).

The input is what both a plan revision and a run have: a list of mappings
`{"id": str, "depends_on": [str], "state": str}` (plus an optional `"href"` to make the node a
link). Plans being edited may be wrong, so nothing here raises: an id named in `depends_on`
that no stage has becomes a dashed "unknown" node, stages caught in a cycle are placed in one
wave after the others and marked, and a repeated id points edges at its first stage.
Pure functions over plain data, no Django models: the web layer renders, this module draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Geometry in SVG user units (1 unit = 1 CSS px at the natural size).
NODE_W = 168
NODE_H = 46
GAP_X = 56
GAP_Y = 16
PAD = 8
# Characters of an id shown in a node before it is truncated with an ellipsis.
ID_CHARS = 20

# The states a node may be drawn in; anything else is drawn as "unknown state" text-wise.
KNOWN_STATES = {
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "planned",
    "invalid",
    "missing",
}
STATE_LABELS = {"missing": "unknown stage", "planned": "planned", "invalid": "has errors"}


@dataclasses.dataclass
class Node:
    """One box: `key` is unique in the graph (ids may repeat or be empty in the editor)."""

    key: str
    stage_id: str
    state: str
    depends_on: list[str]
    href: str = ""
    wave: int = 0
    row: int = 0
    in_cycle: bool = False


@dataclasses.dataclass
class Layout:
    """Nodes placed in waves (columns) and rows, the edges between their keys, and size."""

    nodes: list[Node]
    edges: list[tuple[str, str]]
    waves: int
    rows: int

    @property
    def width(self) -> int:
        return max(self.waves, 1) * (NODE_W + GAP_X) - GAP_X + 2 * PAD

    @property
    def height(self) -> int:
        return max(self.rows, 1) * (NODE_H + GAP_Y) - GAP_Y + 2 * PAD


def layout(stages: Iterable[Mapping[str, Any]]) -> Layout:
    """Place `stages` (`{"id", "depends_on", "state", "href"?}`, in plan order) in waves.

    Waves are longest-path levels (Kahn's algorithm): a stage with no known dependency is in
    wave 0, any other one wave after its deepest dependency. Stages left over by Kahn's
    algorithm are in a cycle: they share the wave after the last one and are flagged. Within a
    wave, rows follow the mean row of the node's dependencies (one barycentre pass, which
    removes most crossings of a plan's few edges), then plan order."""
    nodes: list[Node] = []
    first: dict[str, Node] = {}
    for position, stage in enumerate(stages):
        sid = str(stage.get("id") or "")
        deps = [str(d) for d in (stage.get("depends_on") or []) if isinstance(d, str | int)]
        node = Node(
            key=f"s{position}",
            stage_id=sid,
            state=str(stage.get("state") or "planned"),
            depends_on=list(dict.fromkeys(deps)),
            href=str(stage.get("href") or ""),
        )
        nodes.append(node)
        if sid and sid not in first:
            first[sid] = node
    # Dependencies nobody provides: one dashed node per unknown id, so the mistake is visible.
    for node in list(nodes):
        for dep in node.depends_on:
            if dep not in first:
                missing = Node(key=f"m{len(nodes)}", stage_id=dep, state="missing", depends_on=[])
                nodes.append(missing)
                first[dep] = missing
    edges: list[tuple[str, str]] = []
    preds: dict[str, list[str]] = {n.key: [] for n in nodes}
    for node in nodes:
        for dep in node.depends_on:
            source = first[dep]
            if source.key != node.key:
                edges.append((source.key, node.key))
                preds[node.key].append(source.key)
    by_key = {n.key: n for n in nodes}
    succs: dict[str, list[str]] = {n.key: [] for n in nodes}
    for a, b in edges:
        succs[a].append(b)
    indegree = {k: len(v) for k, v in preds.items()}
    ready = [n.key for n in nodes if indegree[n.key] == 0]
    placed: set[str] = set()
    while ready:
        key = ready.pop(0)
        placed.add(key)
        node = by_key[key]
        node.wave = max((by_key[p].wave + 1 for p in preds[key]), default=0)
        for nxt in succs[key]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    last = max((by_key[k].wave for k in placed), default=-1)
    for node in nodes:
        if node.key not in placed:
            node.in_cycle = True
            node.wave = last + 1
    waves = max((n.wave for n in nodes), default=-1) + 1
    rows = 0
    order = {n.key: i for i, n in enumerate(nodes)}
    for wave in range(waves):
        column = [n for n in nodes if n.wave == wave]
        ranked = sorted(column, key=lambda n: _barycentre(n, preds[n.key], by_key, order))
        for row, node in enumerate(ranked):
            node.row = row
        rows = max(rows, len(column))
    return Layout(nodes=nodes, edges=edges, waves=waves, rows=rows)


def _barycentre(
    node: Node, preds: list[str], by_key: dict[str, Node], order: dict[str, int]
) -> tuple[float, int]:
    """Sort key in a wave: the mean row of the node's placed dependencies, then plan order."""
    upstream = [by_key[p].row for p in preds if by_key[p].wave < node.wave]
    mean = sum(upstream) / len(upstream) if upstream else float(order[node.key])
    return (mean, order[node.key])


def _label(node: Node) -> str:
    return STATE_LABELS.get(node.state, node.state.replace("_", " "))


def _truncate(text: str, n: int = ID_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _xy(node: Node) -> tuple[int, int]:
    return PAD + node.wave * (NODE_W + GAP_X), PAD + node.row * (NODE_H + GAP_Y)


def render_svg(
    stages: Iterable[Mapping[str, Any]], *, label: str = "Stage graph", dom_id: str = "stage-graph"
) -> SafeString:
    """The stage graph of `stages` as an `<svg>` element (autoescaped, safe to insert).

    `label` is the accessible name; `dom_id` prefixes the ids inside the SVG (its `<title>`,
    the arrow marker), so that two graphs on one page do not share them. Every node is a
    `<g class="gnode gnode-<state>" data-stage="<id>" data-state="<state>">` with its id and
    state as text; every edge a `<path class="gedge" data-from data-to>`. An empty list draws
    an empty graph with the text "No stages yet"."""
    plan = layout(stages)
    marker = f"{dom_id}-arrow"
    edge_parts = []
    by_key = {n.key: n for n in plan.nodes}
    for a, b in plan.edges:
        src, dst = by_key[a], by_key[b]
        x1, y1 = _xy(src)
        x2, y2 = _xy(dst)
        x1, y1 = x1 + NODE_W, y1 + NODE_H / 2
        y2 = y2 + NODE_H / 2
        if dst.wave > src.wave:
            bend = max((x2 - x1) / 2, 20)
            d = (
                f"M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} "
                f"{x2 - bend:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}"
            )
        else:
            # Inside a cycle (same wave): loop out to the right and back in from the left.
            top = min(y1, y2) - NODE_H / 2 - GAP_Y / 2
            d = (
                f"M{x1:.0f},{y1:.0f} C{x1 + 40:.0f},{y1:.0f} {x1 + 40:.0f},{top:.0f} "
                f"{x1 - NODE_W / 2:.0f},{top:.0f} S{x2 - 40:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}"
            )
        edge_parts.append(
            format_html(
                '<path class="gedge{}" d="{}" marker-end="url(#{})" data-from="{}" data-to="{}">'
                "<title>{} \u2192 {}</title></path>",
                " gedge-missing" if src.state == "missing" else "",
                d,
                marker,
                src.stage_id,
                dst.stage_id,
                src.stage_id or "(no id)",
                dst.stage_id or "(no id)",
            )
        )
    node_parts = []
    for node in plan.nodes:
        x, y = _xy(node)
        state_class = node.state if node.state in KNOWN_STATES else "other"
        shown = node.stage_id or "(no id)"
        tip = f"{shown}: {_label(node)}"
        if node.depends_on:
            tip += f"; after {', '.join(node.depends_on)}"
        if node.in_cycle:
            tip += "; in a dependency cycle"
        body = format_html(
            '<rect class="gbox" x="{}" y="{}" width="{}" height="{}" rx="6"></rect>'
            '<text class="gid" x="{}" y="{}">{}</text>'
            '<text class="gstate" x="{}" y="{}">{}{}</text>',
            x,
            y,
            NODE_W,
            NODE_H,
            x + 10,
            y + 19,
            _truncate(shown),
            x + 10,
            y + 36,
            _label(node),
            " \u00b7 cycle" if node.in_cycle else "",
        )
        if node.href:
            body = format_html('<a href="{}">{}</a>', node.href, body)
        node_parts.append(
            format_html(
                '<g class="gnode gnode-{}{}" data-stage="{}" data-state="{}" data-wave="{}">'
                "<title>{}</title>{}</g>",
                state_class,
                " gnode-cycle" if node.in_cycle else "",
                node.stage_id,
                node.state,
                node.wave,
                tip,
                body,
            )
        )
    if not plan.nodes:
        node_parts.append(
            format_html('<text class="gempty" x="{}" y="{}">No stages yet</text>', PAD, PAD + 20)
        )
    summary = f"{label}: {len([n for n in plan.nodes if n.state != 'missing'])} stages"
    summary += f" in {plan.waves} wave{'s' if plan.waves != 1 else ''}"
    desc = "; ".join(f"{by_key[a].stage_id} before {by_key[b].stage_id}" for a, b in plan.edges)
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="stage-graph" id="{}" '
        'viewBox="0 0 {} {}" width="{}" height="{}" '
        'role="img" aria-labelledby="{}-title {}-desc">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>'
        '<defs><marker id="{}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path class="garrow" d="M0,0 L10,5 L0,10 z">'
        "</path></marker></defs>{}{}</svg>",
        dom_id,
        plan.width,
        plan.height,
        plan.width,
        plan.height,
        dom_id,
        dom_id,
        dom_id,
        summary,
        dom_id,
        desc or "no dependencies",
        marker,
        # Pieces made by format_html above: already escaped.
        mark_safe("".join(edge_parts)),
        format_html_join("", "{}", ((p,) for p in node_parts)),
    )
