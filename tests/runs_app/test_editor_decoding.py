"""The plan editor's posted form → plan document, at the package boundary (runs_app.editor):
typed field names decode without a schema, stages come back in the order posted with their
parse problems renumbered to match, and each stage has the one stage shape."""

from __future__ import annotations

import pytest
from django.http import QueryDict

from hxo_site.parameters import ParameterError
from runs_app.editor import (
    INVALID_JSON,
    INVALID_NUMBER,
    document_from_post,
    editable_document,
    for_validation,
    parse_json_document,
)


def post(*pairs: tuple[str, str]) -> QueryDict:
    data = QueryDict(mutable=True)
    for key, value in pairs:
        data.appendlist(key, value)
    return data


def test_typed_fields_decode_without_a_schema() -> None:
    posted = document_from_post(
        post(
            ("name:string", " p "),
            ("description:text", "a\r\nb"),
            ("_stages", "0"),
            ("stages[0].id:string", "s"),
            ("stages[0].params.n:integer", " 12 "),
            ("stages[0].params.whole:number", "2"),
            ("stages[0].params.ratio:number", "2.0"),
            ("stages[0].params.on:boolean", "false"),
            ("stages[0].params.on:boolean", "true"),
            ("stages[0].params.paths:lines", "a\n\n b \n"),
            ("stages[0].params.sql:blocks", "select 1;\n\n\nselect 2;\n"),
            ("stages[0].params.deep.inner:json", '{"x": [1]}'),
            ("stages[0].depends_on:list", "a"),
            ("stages[0].depends_on:list", " "),
            ("stages[0].depends_on:list", "b"),
            ("stages[0].non_idempotent:flag", "true"),
        )
    )

    assert posted.problems == []
    assert posted.document == {
        "name": "p",
        "description": "a\nb",
        "stages": [
            {
                "id": "s",
                "kind": "",
                "partitioner": "",
                "executor": "",
                "params": {
                    "n": 12,
                    "whole": 2,
                    "ratio": 2.0,
                    "on": True,
                    "paths": ["a", "b"],
                    "sql": ["select 1;", "select 2;"],
                    "deep": {"inner": {"x": [1]}},
                },
                "depends_on": ["a", "b"],
                "non_idempotent": True,
            }
        ],
    }
    assert isinstance(posted.document["stages"][0]["params"]["whole"], int)
    assert isinstance(posted.document["stages"][0]["params"]["ratio"], float)


def test_an_empty_input_is_unset_so_the_default_applies() -> None:
    posted = document_from_post(
        post(
            ("_stages", "0"),
            ("stages[0].slo_ms:integer", ""),
            ("stages[0].params.n:number", "  "),
            ("stages[0].params.paths:lines", "\n"),
            ("stages[0].params.x:json", ""),
            ("stages[0].non_idempotent:flag", "false"),
        )
    )

    stage = posted.document["stages"][0]
    assert stage["params"] == {}
    assert "slo_ms" not in stage and "non_idempotent" not in stage
    assert posted.document["name"] == "" and posted.document["description"] == ""


def test_what_does_not_parse_is_a_problem_at_its_path() -> None:
    posted = document_from_post(
        post(
            ("_stages", "0"),
            ("stages[0].slo_ms:integer", "1.5"),
            ("stages[0].params.a:integer", "٣"),  # not ASCII digits
            ("stages[0].params.b:number", "1e999"),
            ("stages[0].params.c:number", "ten"),
            ("stages[0].params.d:json", "{"),
            ("stages[0].params._extra:extra", "[1]"),
        )
    )

    found = {(p.path, p.code) for p in posted.problems}
    assert found == {
        ("stages[0].slo_ms", INVALID_NUMBER),
        ("stages[0].params.a", INVALID_NUMBER),
        ("stages[0].params.b", INVALID_NUMBER),
        ("stages[0].params.c", INVALID_NUMBER),
        ("stages[0].params.d", INVALID_JSON),
        ("stages[0].params._extra", INVALID_JSON),
    }
    # The text that did not parse stays, so the validator does not report it as a second error.
    assert posted.document["stages"][0]["slo_ms"] == "1.5"


def test_stages_come_back_in_the_posted_order_with_their_problems_renumbered() -> None:
    posted = document_from_post(
        post(
            ("_stages", "1"),
            ("_stages", "0"),
            ("stages[0].id:string", "first"),
            ("stages[1].id:string", "second"),
            ("stages[1].slo_ms:integer", "x"),
            ("stages[7].id:string", "unlisted"),
        )
    )

    assert [s["id"] for s in posted.document["stages"]] == ["second", "first", "unlisted"]
    assert [p.path for p in posted.problems] == ["stages[0].slo_ms"]


def test_extra_params_fill_in_only_what_the_form_does_not_give() -> None:
    posted = document_from_post(
        post(
            ("_stages", "0"),
            ("stages[0].params.n:integer", "1"),
            ("stages[0].params._extra:extra", '{"n": 9, "other": true}'),
        )
    )

    assert posted.document["stages"][0]["params"] == {"n": 1, "other": True}


def test_unknown_and_private_names_are_ignored_and_the_form_s_own_fields_are_read() -> None:
    posted = document_from_post(
        post(
            ("_stages", "0"),
            ("stages[0].id:string", "s"),
            ("stages[0].colour:string", "red"),  # not a stage field
            ("no-type-suffix", "x"),
            ("bad path!:string", "x"),
            ("_sig", "k|p|e"),
            ("_ids", "s"),
            ("_comment", "  " + "c" * 600),
        )
    )

    assert "colour" not in posted.document["stages"][0]
    assert posted.signatures == ["k|p|e"]
    assert posted.rendered_ids == "s"
    assert posted.comment == "c" * 500


def test_the_validator_sees_unset_selects_as_missing() -> None:
    document = {"name": "p", "stages": [{"id": "s", "kind": "", "partitioner": "p", "params": {}}]}

    assert for_validation(document)["stages"] == [{"id": "s", "partitioner": "p", "params": {}}]
    assert document["stages"][0]["kind"] == ""  # the editor's own document is left alone


def test_imported_json_text_parses_or_says_where_it_broke() -> None:
    assert parse_json_document('{"a": 1}') == ({"a": 1}, None)
    document, problem = parse_json_document('{"a": }')
    assert document is None and problem is not None
    assert (problem.path, problem.code) == ("plan", INVALID_JSON)
    assert "line 1, column 7" in problem.message
    assert parse_json_document("  ")[1].code == INVALID_JSON


def test_a_forged_stage_order_is_a_bad_request() -> None:
    with pytest.raises(ParameterError):
        document_from_post(post(("_stages", "first")))


def test_a_document_opens_in_the_editor_as_a_copy_in_the_one_stage_shape() -> None:
    stored = {"stages": [{"id": "s", "slo_ms": None, "params": {"x": [1]}}, "not a stage"]}

    editable = editable_document(stored)

    assert editable == {
        "name": "",
        "description": "",
        "stages": [
            {
                "id": "s",
                "kind": "",
                "partitioner": "",
                "executor": "",
                "params": {"x": [1]},
                "depends_on": [],
                "slo_ms": None,  # kept: the validator decides what a null means
            }
        ],
    }
    editable["stages"][0]["params"]["x"].append(2)
    assert stored["stages"][0]["params"] == {"x": [1]}
