"""`validation.schema_errors` remembers what a (schema, instance) pair gave: the same issues,
under whichever prefix asks, and never a stale answer for a different instance."""

from __future__ import annotations

from blueprints_app import validation
from blueprints_app.validation import Issue, schema_errors

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["root"],
    "properties": {"root": {"type": "string"}, "level": {"type": "integer", "maximum": 9}},
}


def test_the_same_pair_answers_from_the_memo_under_each_prefix() -> None:
    validation._instance_errors.cache_clear()
    instance = {"level": 12, "zeta": 1, "alpha": 2}
    first = schema_errors(SCHEMA, instance, "stages[0].params")
    again = schema_errors(SCHEMA, dict(reversed(instance.items())), "stages[3].params")

    assert validation._instance_errors.cache_info().hits == 1
    assert [i.path for i in first] == [
        "stages[0].params",
        "stages[0].params.root",
        "stages[0].params.level",
    ]
    assert [i.path.replace("[3]", "[0]") for i in again] == [i.path for i in first]
    assert [i.message for i in again] == [i.message for i in first]
    # Key order does not matter: jsonschema's messages sort the keys they name.
    assert "('alpha', 'zeta' were unexpected)" in first[0].message


def test_a_different_instance_is_judged_afresh() -> None:
    assert schema_errors(SCHEMA, {"root": "a", "level": 3}, "p") == []
    assert schema_errors(SCHEMA, {"root": "a", "level": 30}, "p") == [
        Issue("p.level", "", "30 is greater than the maximum of 9")
    ]
    # 1.0 and 1 are different JSON texts, and JSON Schema takes both as integers.
    assert schema_errors(SCHEMA, {"root": "a", "level": 1.0}, "p") == []


def test_an_instance_that_is_not_json_is_validated_without_the_memo() -> None:
    found = schema_errors(SCHEMA, {"root": {1, 2}}, "p")
    assert [i.path for i in found] == ["p.root"]
    assert "is not of type 'string'" in found[0].message
