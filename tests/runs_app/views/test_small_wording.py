"""Small wording fixes found by a new operator (issue 15 §7)."""

from __future__ import annotations

import pytest

from blueprints_app.validation import validate_stage
from hxo_site import codes
from runs_app import selectors
from runs_app.models import Partition, Run


def test_a_stage_without_an_executor_is_told_it_needs_an_executor() -> None:
    result = validate_stage({"id": "s", "kind": "deploy.pack", "params": {}}, kinds={})
    messages = {i.path: i.message for i in result.errors if i.code == codes.REQUIRED}
    assert messages["stage.executor"] == "a stage needs an executor"
    assert messages["stage.partitioner"] == "a stage needs a partitioner"


@pytest.mark.django_db
def test_an_applied_partition_says_how_many_rows_it_changed(applied: Run) -> None:
    first, second = Partition.objects.filter(stage__run=applied).order_by("id")[:2]
    # What sql_migrate returns (runs_app.kinds.migrate.SqlMigrate._output): the row count is
    # in the output; an output without one keeps its plain status.
    first.output = {"status": "migrated", "batch_id": 0, "rows_affected": 500, "ledger": "x"}
    second.output = {"status": "done"}
    Partition.objects.bulk_update([first, second], ["output"])

    rows = {row.pk: row for row in selectors.partition_rows(applied).qs}

    assert rows[first.pk].output_status == "migrated (rows affected: 500)"
    assert rows[second.pk].output_status == "done"
