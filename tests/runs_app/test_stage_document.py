"""The one normaliser of the stage document (runs_app.manifest.stage_document) and the stored
form of a plan (plan_document): what a revision stores, and so its digest, is pinned for every
example plan, as written and written loosely (keys reordered, the name padded, an integral
float, a null setting), so that a change to the normaliser cannot silently change a digest."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from blueprints_app.validation import validate_plan
from runs_app import services
from runs_app.hashing import document_digest
from runs_app.manifest import plan_document, run_stage_document, stage_document
from runs_app.models import RunStage
from tests.runs_app.kinds.conftest import EXAMPLES

PLANS = sorted((EXAMPLES / "plans").glob("*.json"))

# example/variant → (revision digest, SHA-256 of the stored JSON text in its key order), as
# computed by the services' own normaliser before it became manifest.plan_document.
STORED = {
    "assets-index-by-bucket/as-is": (
        "9941a055c5fb46ed631cf547f5448dfd58ffd44d956ff756ead928b76d8f5e8b",
        "8598d639ecd82570fb04806d1a7f2c40c647fcd6e17c5ffd4010669fdeb214f2",
    ),
    "assets-index-by-bucket/variant": (
        "15a5cd0fe17935b38ff1f7f4d41d0bb531b5abe4e15930fb9dfb80a646a0b0de",
        "b450e9f9c54d33bb73334e225a684757a676475d5f74aa3f4bcf3689c608bcf2",
    ),
    "assets-index-by-filesize/as-is": (
        "c299f8f0c276e147cba7234132951c4682810eeab5d5b13feda09e7cae039be6",
        "418f8fcd512484ef575321a7b5aa6f324897cfa4e3522efc13119232b10c7027",
    ),
    "assets-index-by-filesize/variant": (
        "fb3a514db01310495112cce5194a6144203bbe22d6d85b53b8f1f32a8cbb941d",
        "997504f830902a8a118ca7f2418519e78299404e22ffc7bec6e50348006fc389",
    ),
    "assets-stage-by-filesize/as-is": (
        "161e0175d8db521cb7dc5fcd02c04eb58385c40ceef388b891d9de68e5fc1e33",
        "9254c7f52c836ce6a319f765b324c0d559b8b39ac1a8e96cb5fe11e73b01b2de",
    ),
    "assets-stage-by-filesize/variant": (
        "3f4b985a82614cb729aa5f0cafdee8d4dc499e2752332bdf5f2736832547a942",
        "edd4312578cd643f2de753a866ab92bc10b8e7ca98ff59a67fa1469da333ddfd",
    ),
    "docs-index-by-route/as-is": (
        "ec86bd30468cc6dc5cb93327cc5425756c42982335ba3749f0d3e2c2cebd5277",
        "30efb41e96c300e5d846740508f1d37fb6ff94eff0735c299a1c55b89853c617",
    ),
    "docs-index-by-route/variant": (
        "7015faec56c8cdccc29f737109692e9ecc35021fad1571d24e2e3b58714933f1",
        "c7cb771c155e53d45f1a3a4719162c6c91ca3b9a8c867ad1feb7f36dc905e538",
    ),
    "migrate-backfill-email-domain/as-is": (
        "fafd364551202c4a6d373d2eb7e29060c2442cf0c09c764fa377b16ad4a4f961",
        "cd69444503f82bb89a82178d15f5d5f1c2bc721c778e60a1dc2048b5c5719ac4",
    ),
    "migrate-backfill-email-domain/variant": (
        "9321b8549f17baa87242751d2669cf10d48de32a73fd4cfd2737cf994b801f80",
        "d7ca09ddcf124e800cef40fb29763f38e5ccbd2bd49003e519b597f468590530",
    ),
    "migrate-statements-indexes/as-is": (
        "f809a3e56727f57f4a9c956dcc63b735f7bd9f108d642b46ad2e603da220755f",
        "4e96896d0b9b96b9474d8d225eb700f48e2286e2d5fc32946985ed632adf92c5",
    ),
    "migrate-statements-indexes/variant": (
        "37a1fb63196c3ef21f2edb44c79076e40257031ad619040b363694fc634fb22d",
        "d65da20dd04118adcf03fbed759cfd71ce11b82a9ceaf9fd5138b066dbd3edfa",
    ),
    "pack-backend-by-filesize/as-is": (
        "b04c9455603f3c6be335510e88d8603f8b4c1553164a385b0cfe772b5946552a",
        "5bb5a227b8935b6c2380110cceeca7d5bdc036e39057e158eab7fd40fc62553d",
    ),
    "pack-backend-by-filesize/variant": (
        "413eadce81f304d019e28ee1eaf4ceff267aa3981ee1a52b47a5fcb44d97f3b4",
        "9bdeac65da2a61af234d9834888aa582f74b3deac0dcb9338d6557eaf00372aa",
    ),
    "pack-backend-by-module/as-is": (
        "2c5c6618a15960265f96d6c6073f1b1493853910131b84e13eeb6c2605ff2af3",
        "9d92ad289a7365ca020de6e033d8c115da4191cd1cadcca82df1fb181188f058",
    ),
    "pack-backend-by-module/variant": (
        "a0b6a3521d1ebcd6fa1639dbe770abca48207930c6b46b99eb8cd5b65843cb62",
        "d0e9d7b8a7ee46a36fbb0a3d319e327c090933fc044defbd54b7fe5688024dc4",
    ),
    "prime-bytecode-by-module/as-is": (
        "ba23940118d491c9493e8ab1bc507aa6c97687a7578ac91ec2a8b3823a58f146",
        "9335a29053dda5787d29ecec3502818dcb1282785d000e2d78b7c92ca51c4e8f",
    ),
    "prime-bytecode-by-module/variant": (
        "430d4aecc142a0bdecb0ec2f52d70979885d44533810f2bd7402321dfc5d8da8",
        "02aea1421a4d2d6e7c9f4af59cf8c8cdafe610eb3f77247c591442a7378576c3",
    ),
    "prime-registry-by-dag-depth/as-is": (
        "ee4df04e525f474dcd63ae500a69e1e977503f9e6b65c3156def3d3edeaef7cc",
        "b478b4544356c9b002744ff9d5988ee3191283af62bbf96a5cc76d5ad1286bd7",
    ),
    "prime-registry-by-dag-depth/variant": (
        "c470c89b24e64cd6db899e3943217ffc283293dd4c9fca35fb215239aaef11e9",
        "4c2d0627452a25f710b6fd6500cb3854f58f5bf369aec59891c89421c564462b",
    ),
    "release-demo/as-is": (
        "d68a9c823a5398074a95e37198d52898bbb708633301bce19ca032e332d8b8da",
        "0bdfd53eb065d845e26eeaf53d02c3946c42a05cde80d16eac13beb8345572c1",
    ),
    "release-demo/variant": (
        "38710b3e59b00bf13f5b88820ba00c071454e5c1eb40491c580fcb2ec4991e56",
        "ff8898e7752b06c9f0fdfaf4bbc460fa2d6d194b8d9953739ebb7cf004794222",
    ),
}


def loosely(document: dict[str, Any]) -> dict[str, Any]:
    """The same plan as a client may write it: the stored form must not change."""
    document = copy.deepcopy(document)
    document["name"] = "  " + document["name"] + " \n"
    for stage in document["stages"]:
        stage["slo_ms"] = 60000.0
        stage["max_failed_partitions"] = None
        items = list(stage.items())[::-1]
        stage.clear()
        stage.update(items)
    return document


def examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in PLANS:
        document = json.loads(path.read_text())
        out += [(f"{path.stem}/as-is", document), (f"{path.stem}/variant", loosely(document))]
    return out


def test_every_example_plan_and_variant_is_pinned() -> None:
    assert sorted(label for label, _ in examples()) == sorted(STORED)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "label,document", examples(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_the_stored_form_of_the_example_plans_is_unchanged(label: str, document: dict) -> None:
    assert validate_plan(document).valid
    stored = plan_document(document)

    digest, text = STORED[label]
    assert document_digest(stored) == digest
    assert hashlib.sha256(json.dumps(stored).encode()).hexdigest() == text


@pytest.mark.django_db
def test_a_plan_saved_through_the_services_has_the_pinned_digest(operator) -> None:
    for label, document in examples():
        plan = services.plan_create(actor=operator, document=document)

        assert plan.latest_revision.digest == STORED[label][0], label


# --- stage_document --------------------------------------------------------------------------


def test_a_stage_gets_its_fields_in_one_order_with_defaults() -> None:
    stage = {
        "depends_on": ["a"],
        "slo_ms": 5,
        "executor": "e",
        "id": "s",
        "max_failed_partitions": 1,
    }
    stage |= {"non_idempotent": True, "params": {"x": 1}, "kind": "k", "partitioner": "p"}

    out = stage_document(stage)

    assert list(out) == [
        "id",
        "kind",
        "partitioner",
        "executor",
        "params",
        "depends_on",
        "slo_ms",
        "non_idempotent",
        "max_failed_partitions",
    ]
    assert out == stage
    assert stage_document({}) == {
        "id": "",
        "kind": "",
        "partitioner": "",
        "executor": "",
        "params": {},
        "depends_on": [],
    }


def test_unknown_fields_are_dropped_and_empty_params_and_dependencies_become_empty() -> None:
    out = stage_document({"id": "s", "params": None, "depends_on": None, "extra": 1})

    assert out == {
        "id": "s",
        "kind": "",
        "partitioner": "",
        "executor": "",
        "params": {},
        "depends_on": [],
    }


def test_depends_on_is_a_copy_and_a_value_of_the_wrong_type_stays_for_the_validator() -> None:
    deps = ["a"]
    out = stage_document({"depends_on": deps})
    out["depends_on"].append("b")

    assert deps == ["a"]
    assert stage_document({"depends_on": "a"})["depends_on"] == "a"
    assert stage_document({"depends_on": {"a": 1}})["depends_on"] == {"a": 1}


def test_a_null_setting_is_unset_unless_the_editor_keeps_it_for_the_validator() -> None:
    stage = {"id": "s", "slo_ms": None, "non_idempotent": None, "max_failed_partitions": 0}

    assert "slo_ms" not in stage_document(stage)
    assert "non_idempotent" not in stage_document(stage)
    assert stage_document(stage)["max_failed_partitions"] == 0  # zero is set, not null
    kept = stage_document(stage, keep_null=True)
    assert kept["slo_ms"] is None and kept["non_idempotent"] is None


def test_a_stored_plan_is_stripped_integral_and_complete() -> None:
    stored = plan_document(
        {
            "name": " p ",
            "stages": [
                {
                    "id": "s",
                    "kind": "k",
                    "partitioner": "p",
                    "executor": "e",
                    "params": {"n": 2.0, "f": 2.5},
                    "slo_ms": 10.0,
                }
            ],
        }
    )

    assert stored["name"] == "p"
    assert stored["description"] == ""
    stage = stored["stages"][0]
    assert stage["slo_ms"] == 10 and isinstance(stage["slo_ms"], int)
    assert stage["params"] == {"n": 2, "f": 2.5} and isinstance(stage["params"]["n"], int)


def test_the_executor_sees_the_run_s_row_without_the_engine_s_settings() -> None:
    row = RunStage(
        stage_id="s",
        kind="k",
        partitioner="p",
        executor="e",
        params={"x": 1},
        depends_on=["a"],
        non_idempotent=False,
        slo_ms=1000,
        max_failed_partitions=2,
    )

    out = run_stage_document(row)

    assert out == {
        "id": "s",
        "kind": "k",
        "partitioner": "p",
        "executor": "e",
        "params": {"x": 1},
        "depends_on": ["a"],
        "non_idempotent": False,
    }
    assert list(out) == [
        "id",
        "kind",
        "partitioner",
        "executor",
        "params",
        "depends_on",
        "non_idempotent",
    ]
