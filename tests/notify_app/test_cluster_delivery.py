"""End to end through django-q2: a real cluster (forked workers, the configured broker) sends
the webhook the run's transaction wrote, and a sweep sent through the queue retries it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django_q.tasks import async_task

from notify_app.models import Channel, Delivery, Webhook
from notify_app.tasks import SWEEP_TASK
from runs_app import services
from runs_app.models import Run, RunState
from tests.notify_app.receiver import Receiver
from tests.runs_app.cluster import running_cluster, wait_for
from tests.runs_app.testkinds import stage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def test_a_cluster_sends_the_webhook_and_a_queued_sweep_retries_it(
    test_kinds, tmp_path: Path, operator
) -> None:
    receiver = Receiver(secret="cluster-secret", script=[500])
    try:
        Webhook.objects.create(
            name="r", url=receiver.url, secret="cluster-secret", events=["run.awaiting_approval"]
        )
        plan = services.plan_create(
            actor=operator, document={"name": "c", "stages": [stage("a", tmp_path, items=2)]}
        )
        with running_cluster(WORKERS=2):
            run = services.run_start_dry_run(plan=plan, actor=operator)

            def waiting() -> Run | None:
                run.refresh_from_db()
                return run if run.state == RunState.AWAITING_APPROVAL else None

            wait_for(waiting, "the dry-run to wait for approval")
            first = wait_for(
                lambda: (
                    Delivery.objects.filter(channel=Channel.WEBHOOK, attempts=1)
                    .exclude(status_code=None)
                    .first()
                ),
                "the first attempt, sent by a worker",
            )
            assert first.status_code == 500 and first.state == "pending"
            async_task(SWEEP_TASK)
            done = wait_for(
                lambda: Delivery.objects.filter(channel=Channel.WEBHOOK, state="delivered").first(),
                "the retry, sent by the queued sweep",
            )
        assert done.attempts == 2 and done.status_code == 200
        assert len(receiver.got) == 2 and all(r.verified for r in receiver.got)
        assert receiver.got[1].json["data"]["run"]["id"] == run.pk
    finally:
        receiver.close()
