"""Issue 15 §3: the stage graph (plan page, editor, the run page's partial), the plan page's
history grid (recent runs by stages, query count flat in the number of runs) and plan
descriptions rendered as safe Markdown."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.test.utils import CaptureQueriesContext

from runs_app import graph, services
from runs_app.markup import link_allowed, render_markdown, render_summary
from runs_app.models import Plan, Run, RunStage
from tests.helpers import partitioned
from tests.runs_app.testkinds import TEST_KIND, stage
from tests.runs_app.views.conftest import html
from tests.runs_app.views.test_plan_editor import echo_stage, form, sig

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"


def svg_of(body: str, dom_id: str) -> ElementTree.Element:
    """The `<svg id=dom_id>` of a page, parsed as XML: a graph that is not well-formed fails."""
    m = re.search(rf'<svg [^>]*class="stage-graph" id="{re.escape(dom_id)}".*?</svg>', body, re.S)
    assert m, f"no stage graph {dom_id}"
    return ElementTree.fromstring(m.group(0))


def nodes(svg: ElementTree.Element) -> dict[str, dict[str, str]]:
    out = {}
    for g in svg.iter(f"{SVG}g"):
        if "gnode" in g.get("class", "").split():
            texts = [t.text for t in g.iter(f"{SVG}text")]
            out[g.get("data-stage")] = {
                "state": g.get("data-state"),
                "wave": g.get("data-wave"),
                "class": g.get("class"),
                "text": " ".join(texts),
                "title": g.find(f"{SVG}title").text,
            }
    return out


def edges(svg: ElementTree.Element) -> set[tuple[str, str]]:
    return {
        (p.get("data-from"), p.get("data-to"))
        for p in svg.iter(f"{SVG}path")
        if "gedge" in p.get("class", "").split()
    }


# --- The graph renderer ------------------------------------------------------------------------


def test_waves_are_longest_path_levels_left_to_right() -> None:
    stages = [
        {"id": "extract", "depends_on": [], "state": "succeeded"},
        {"id": "load", "depends_on": ["extract"], "state": "running"},
        {"id": "docs", "depends_on": [], "state": "failed"},
        {"id": "report", "depends_on": ["load", "extract", "docs"], "state": "pending"},
    ]
    svg = ElementTree.fromstring(str(graph.render_svg(stages)))
    got = nodes(svg)
    assert {k: v["wave"] for k, v in got.items()} == {
        "extract": "0",
        "docs": "0",
        "load": "1",
        "report": "2",
    }
    assert edges(svg) == {
        ("extract", "load"),
        ("load", "report"),
        ("extract", "report"),
        ("docs", "report"),
    }
    # The state is in the text, not only the colour; the class carries the colour.
    assert "failed" in got["docs"]["text"] and "gnode-failed" in got["docs"]["class"]
    assert "running" in got["load"]["text"]
    # Nodes of a later wave are further right.
    layout = graph.layout(stages)
    xs = {n.stage_id: graph._xy(n)[0] for n in layout.nodes}
    assert xs["extract"] < xs["load"] < xs["report"]


def test_long_ids_are_truncated_with_the_full_id_in_a_tooltip() -> None:
    long_id = "backfill_customer_invoices_2024_q4_part_two"
    svg = str(graph.render_svg([{"id": long_id, "depends_on": [], "state": "pending"}]))
    assert f">{long_id}<" not in svg  # not drawn whole
    assert "backfill_customer_i\u2026" in svg
    assert f"<title>{long_id}: pending</title>" in svg


def test_hostile_ids_are_escaped_and_the_svg_stays_well_formed() -> None:
    evil = '"><script>alert(1)</script><x a="'
    out = str(graph.render_svg([{"id": evil, "depends_on": [evil + "2"], "state": "x<y"}]))
    assert "<script>" not in out
    assert "&lt;script&gt;" in out
    ElementTree.fromstring(out)  # raises when the markup broke out


def test_an_edited_plan_with_cycles_and_unknown_ids_still_draws() -> None:
    stages = [
        {"id": "a", "depends_on": ["b"]},
        {"id": "b", "depends_on": ["a"]},
        {"id": "c", "depends_on": ["ghost"]},
        {"id": "", "depends_on": []},
        {"id": "c", "depends_on": []},  # a repeated id: edges point at the first
    ]
    svg = ElementTree.fromstring(str(graph.render_svg(stages)))
    got = nodes(svg)
    assert got["ghost"]["state"] == "missing" and "unknown stage" in got["ghost"]["text"]
    assert "gnode-cycle" in got["a"]["class"] and "cycle" in got["b"]["text"]
    assert ("ghost", "c") in edges(svg)
    assert "(no id)" in got[""]["text"]


def test_no_style_attributes_for_the_csp() -> None:
    out = str(graph.render_svg([{"id": "a", "depends_on": [], "state": "failed"}]))
    assert "style=" not in out and "<style" not in out and "<script" not in out


# --- On the pages ------------------------------------------------------------------------------


@pytest.fixture
def diamond(test_kinds, operator, tmp_path: Path) -> Plan:
    return services.plan_create(
        actor=operator,
        document={
            "name": "diamond",
            "description": "Rebuilds **all** indexes. See [the runbook](https://example.org/rb) "
            "and [`/runs/`](/runs/).\n\n<script>alert('x')</script> "
            "[click](javascript:alert(document.cookie)) [data](data:text/html,hi)",
            "stages": [
                stage("root", tmp_path, items=2, kind=TEST_KIND),
                stage("left", tmp_path, items=2, kind=TEST_KIND, depends_on=["root"]),
                stage("right", tmp_path, items=2, kind=TEST_KIND, depends_on=["root"]),
                stage("join", tmp_path, items=1, kind=TEST_KIND, depends_on=["left", "right"]),
            ],
        },
    )


def test_the_plan_page_draws_its_stage_graph(client_for, viewer, diamond) -> None:
    body = html(client_for(viewer).get(f"/plans/{diamond.pk}/"))
    svg = svg_of(body, "plan-graph")
    got = nodes(svg)
    assert set(got) == {"root", "left", "right", "join"}
    assert {k: v["wave"] for k, v in got.items()} == {
        "root": "0",
        "left": "1",
        "right": "1",
        "join": "2",
    }
    assert edges(svg) == {("root", "left"), ("root", "right"), ("left", "join"), ("right", "join")}
    assert all(v["state"] == "planned" for v in got.values())
    assert "The plan has not run yet." in body


def test_the_plan_graph_takes_the_states_of_the_newest_run(
    client_for, viewer, diamond, operator
) -> None:
    run = partitioned(services.run_start_dry_run(plan=diamond, actor=operator))
    # Its stages' states as the engine left them, set here so that each node differs.
    for sid, state in (("root", "succeeded"), ("left", "failed"), ("right", "succeeded")):
        RunStage.objects.filter(run=run, stage_id=sid).update(state=state)
    RunStage.objects.filter(run=run, stage_id="join").update(state="cancelled")
    body = html(client_for(viewer).get(f"/plans/{diamond.pk}/"))
    got = nodes(svg_of(body, "plan-graph"))
    assert {k: v["state"] for k, v in got.items()} == {
        "root": "succeeded",
        "left": "failed",
        "right": "succeeded",
        "join": "cancelled",
    }
    assert f"run #{run.pk}" in body


def test_the_run_partial_draws_a_runs_progress() -> None:
    progress = [
        {"id": "a", "depends_on": [], "state": "succeeded", "kind": "x"},
        {"id": "b", "depends_on": ["a"], "state": "running", "kind": "x"},
    ]
    body = render_to_string(
        "hxo/runs/_stage_graph.html", {"stages": progress, "graph_id": "run-graph"}
    )
    svg = svg_of(body, "run-graph")
    assert edges(svg) == {("a", "b")}
    assert nodes(svg)["b"]["state"] == "running"
    assert 'data-testid="stage-graph"' in body


def test_the_editor_draws_the_graph_and_live_validation_redraws_it(op_client, tmp_path) -> None:
    a = echo_stage(tmp_path)
    b = echo_stage(tmp_path, **{"id:string": "b", "depends_on:list": ["a", "ghost"]})
    a["_sig"], b["_sig"] = sig(a), sig(b)
    page = html(op_client.get("/plans/new/"))
    assert 'id="editor-graph"' in page and svg_of(page, "editor-graph-svg") is not None
    body = html(op_client.post("/plans/validate/", form([a, b], _ids="a,b")))
    # The graph comes back out of band (it is not an input: swapping it loses no typing).
    assert '<div id="editor-graph" class="editor-graph" hx-swap-oob="true">' in body
    svg = svg_of(body, "editor-graph-svg")
    got = nodes(svg)
    assert edges(svg) == {("a", "b"), ("ghost", "b")}
    assert got["b"]["state"] == "invalid" and "has errors" in got["b"]["text"]
    assert got["a"]["state"] == "planned"
    assert got["ghost"]["state"] == "missing"
    # Adding a stage (the structural edit) redraws it too.
    body = html(op_client.post("/plans/new/", form([a], _action="add"), HTTP_HX_REQUEST="true"))
    assert len(nodes(svg_of(body, "editor-graph-svg"))) == 2


@pytest.fixture
def op_client(client_for, operator, test_kinds):
    return client_for(operator)


# --- The history grid --------------------------------------------------------------------------


def clone_runs(run: Run, n: int) -> list[Run]:
    """`n` more runs of `run`'s plan, each with copies of its stages in varied states: rows as
    the engine leaves them, without executing n runs."""
    stages = list(RunStage.objects.filter(run=run))
    states = ["succeeded", "failed", "cancelled", "running", "pending"]
    made = []
    for i in range(n):
        copy = Run.objects.get(pk=run.pk)
        copy.pk = None
        copy.idempotency_key = None
        copy.state = ["succeeded", "failed", "aborted"][i % 3]
        copy.save()
        for j, s in enumerate(stages):
            s.pk = None
            s.run = copy
            s.state = states[(i + j) % len(states)]
            s.save()
        made.append(copy)
    return made


def grid_cells(body: str) -> list[tuple[str, str, str]]:
    grid = body[body.index('data-testid="history-grid"') :]
    grid = grid[: grid.index("</table>")]
    return re.findall(
        r'class="hcell hcell-[a-z_]+" href="/runs/(\d+)/\?stage=([^"]+)"'
        r'[^>]*data-state="([a-z_]+)"',
        grid,
    )


def test_the_history_grid_shows_each_stage_state_per_run_with_links(
    client_for, viewer, diamond, operator
) -> None:
    first = partitioned(services.run_start_dry_run(plan=diamond, actor=operator))
    RunStage.objects.filter(run=first).update(state="succeeded")
    more = clone_runs(first, 2)
    RunStage.objects.filter(run=more[-1], stage_id="left").update(state="failed")
    body = html(client_for(viewer).get(f"/plans/{diamond.pk}/"))
    cells = grid_cells(body)
    # 3 runs by 4 stages, each linked to its run with the stage as the filter.
    assert len(cells) == 12
    assert (str(more[-1].pk), "left", "failed") in cells
    assert (str(first.pk), "join", "succeeded") in cells
    # Legible without colour: the state in words for screen readers, a glyph on screen.
    assert f"left in run #{more[-1].pk}: failed" in body
    # Oldest on the left.
    ids = re.findall(r'class="hg-run"><a href="/runs/(\d+)/"', body)
    assert ids == [str(first.pk), *[str(r.pk) for r in more]]


def test_a_stage_an_older_run_had_shows_as_its_own_row(
    client_for, viewer, diamond, operator, tmp_path
) -> None:
    run = partitioned(services.run_start_dry_run(plan=diamond, actor=operator))
    RunStage.objects.create(
        run=run, stage_id="retired", position=9, kind=TEST_KIND, partitioner="p",
        executor="e", slo_ms=1000, state="succeeded",
    )  # fmt: skip
    body = html(client_for(viewer).get(f"/plans/{diamond.pk}/"))
    assert (str(run.pk), "retired", "succeeded") in grid_cells(body)


def test_the_plan_page_query_count_is_flat_in_the_number_of_runs(
    client_for, viewer, diamond, operator
) -> None:
    client = client_for(viewer)
    first = partitioned(services.run_start_dry_run(plan=diamond, actor=operator))
    clone_runs(first, 2)
    client.get(f"/plans/{diamond.pk}/")  # warm caches (session, registry)
    with CaptureQueriesContext(connection) as three:
        body3 = html(client.get(f"/plans/{diamond.pk}/"))
    clone_runs(first, 27)
    with CaptureQueriesContext(connection) as thirty:
        body30 = html(client.get(f"/plans/{diamond.pk}/"))
    assert len(grid_cells(body3)) == 3 * 4
    # 30 runs, of which the grid shows the last 25.
    assert len(grid_cells(body30)) == 25 * 4
    assert len(thirty) == len(three), [q["sql"] for q in thirty.captured_queries]


# --- Markdown descriptions ---------------------------------------------------------------------


def test_the_description_is_markdown_with_html_and_script_links_neutralised(
    client_for, viewer, diamond
) -> None:
    body = html(client_for(viewer).get(f"/plans/{diamond.pk}/"))
    desc = body[body.index('data-testid="plan-description"') :]
    desc = desc[: desc.index("</div>")]
    assert "<strong>all</strong>" in desc
    assert '<a href="https://example.org/rb" rel="nofollow noopener noreferrer">' in desc
    assert '<a href="/runs/" rel="nofollow noopener noreferrer"><code>/runs/</code></a>' in desc
    assert "<script" not in desc and "&lt;script&gt;" in desc
    assert 'href="javascript' not in desc and 'href="data' not in desc


def test_the_plan_list_shows_the_descriptions_first_paragraph_rendered(
    client_for, viewer, diamond
) -> None:
    body = html(client_for(viewer).get("/plans/"))
    assert "Rebuilds <strong>all</strong> indexes." in body
    assert "<script>alert" not in body
    assert 'href="javascript' not in body


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "java\tscript:alert(1)",
        " javascript:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "//evil.example/x",
        "\\\\evil.example/x",
        "mailto:a@b.c",
        "http:/no-host",
    ],
)
def test_only_http_https_and_relative_links_are_allowed(url: str) -> None:
    assert not link_allowed(url)
    out = str(render_markdown(f"[x]({url})"))
    for href in re.findall(r'href="([^"]*)"', out):
        # Markdown's own backslash escape leaves a harmless percent-encoded relative path.
        assert href.startswith("%5C") and not href.startswith("%5C%5C"), out


@pytest.mark.parametrize("url", ["https://a.example/b?c#d", "http://a.example", "/runs/", "#x"])
def test_safe_links_are_kept(url: str) -> None:
    assert link_allowed(url)
    assert "<a href=" in str(render_markdown(f"[x]({url})"))


def test_raw_html_and_images_are_not_rendered() -> None:
    out = str(render_markdown('<img src=x onerror=alert(1)>\n\n![alt <b>](/x.png "t")'))
    assert "<img" not in out and "&lt;img" in out
    assert "alt &lt;b&gt;" in out
    summary = str(render_summary("**a** " + "word " * 50, chars=30))
    assert summary.startswith("<strong>a</strong>") and summary.endswith("\u2026")
