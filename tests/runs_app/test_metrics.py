"""GET /metrics: who may scrape it, and figures that follow real runs (parsed with
prometheus_client's own parser), at a query count flat in the number of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ
from prometheus_client.parser import text_string_to_metric_families

from runs_app import metrics, services, tasks
from runs_app.models import Lease, Partition, PartitionState, RunState, StageRollup
from tests.helpers import drain, partitioned
from tests.runs_app.testkinds import TEST_KIND, TEST_KIND_NOAPPROVAL, effects, stage

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "s3cret-scrape-token"
QUICK = TEST_KIND_NOAPPROVAL


@pytest.fixture
def scrape(client, settings):
    settings.HXO_METRICS_TOKEN = TOKEN

    def read() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples
        }

    return read


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (a kind not seen yet has no series)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def waiting_in_queue(settings) -> int:
    """Wake-ups waiting, read from the broker's own storage: OrmQ rows or the Redis list."""
    from django_q.brokers import get_broker

    if settings.HXO_BROKER == "redis":
        import redis

        return redis.Redis.from_url(settings.REDIS_URL).llen(get_broker().list_key)
    return OrmQ.objects.filter(lock__lte=timezone.now()).count()


def plan_of(operator, *stages: dict[str, Any]):
    return services.plan_create(actor=operator, document={"name": "m", "stages": list(stages)})


# --- who may scrape ---------------------------------------------------------------------------


def test_metrics_are_off_until_a_token_or_addresses_are_configured(client, settings) -> None:
    settings.HXO_METRICS_TOKEN = ""
    settings.HXO_METRICS_ALLOWED_IPS = ()
    assert client.get("/metrics").status_code == 404


def test_a_scrape_needs_the_bearer_token(client, settings) -> None:
    settings.HXO_METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Token {TOKEN}").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code in (403, 405)


def test_a_scrape_from_an_allowed_address_needs_no_token(client, settings) -> None:
    import ipaddress

    settings.HXO_METRICS_ALLOWED_IPS = (ipaddress.ip_network("10.1.0.0/16"),)
    settings.HXO_METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 403
    # A forged X-Forwarded-For counts only behind the trusted proxy, and only its last entry.
    forged = {"REMOTE_ADDR": "192.0.2.9", "HTTP_X_FORWARDED_FOR": "10.1.0.1"}
    assert client.get("/metrics", **forged).status_code == 403
    settings.HXO_BEHIND_PROXY = True
    assert client.get("/metrics", **forged).status_code == 200
    forged["HTTP_X_FORWARDED_FOR"] = "10.1.0.1, 203.0.113.7"
    assert client.get("/metrics", **forged).status_code == 403


def test_bad_allowed_addresses_are_refused_at_start(monkeypatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from hxo_site.settings import env_networks

    monkeypatch.setenv("HXO_METRICS_ALLOWED_IPS", "10.0.0.0/8, not-an-address")
    with pytest.raises(ImproperlyConfigured, match="HXO_METRICS_ALLOWED_IPS"):
        env_networks("HXO_METRICS_ALLOWED_IPS")
    monkeypatch.setenv("HXO_METRICS_ALLOWED_IPS", " 10.0.0.0/8,::1 ")
    assert [str(n) for n in env_networks("HXO_METRICS_ALLOWED_IPS")] == ["10.0.0.0/8", "::1/128"]


# --- figures that follow real runs ------------------------------------------------------------


def test_counts_follow_a_run_with_a_retry_and_a_failure(
    test_kinds, tmp_path: Path, admiral, settings, scrape
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0
    before = scrape()
    assert value(before, "hxo_partitions_claimed_total", kind=QUICK) == 0
    plan = plan_of(
        admiral,  # a non-idempotent stage needs hxo:force-merge
        # Item 1 fails once and is retried; item 2 of b fails and, non-idempotent, stays failed.
        stage("a", tmp_path, items=4, kind=QUICK, fail={"1": 1}),
        stage("b", tmp_path, items=3, kind=QUICK, executor="test_append_once", fail={"2": 5}),
    )
    run = partitioned(services.run_apply(plan=plan, actor=admiral))
    pending = scrape()
    assert value(pending, "hxo_runs", state="running") == 1
    assert value(pending, "hxo_partitions", kind=QUICK, state="pending") == 7
    waiting = waiting_in_queue(settings)
    assert waiting >= 1 and value(pending, "hxo_queue_depth") == waiting
    assert value(pending, "hxo_queue_up") == 1

    run = drain(run)
    assert run.state == RunState.FAILED
    after = scrape()
    # The effects the executors left behind are what the counters count.
    assert sorted(set(effects(tmp_path, "a"))) == [0, 1, 2, 3]
    assert sorted(effects(tmp_path, "b")) == [0, 1]
    assert value(after, "hxo_runs", state="failed") == 1
    assert value(after, "hxo_runs", state="running") == 0
    assert value(after, "hxo_partitions_succeeded_total", kind=QUICK) == 4 + 2
    assert value(after, "hxo_partitions_failed_total", kind=QUICK) == 1
    assert value(after, "hxo_partitions_claimed_total", kind=QUICK) == 4 + 1 + 3
    assert value(after, "hxo_partitions_retried_total", kind=QUICK) == 1
    assert value(after, "hxo_partitions", kind=QUICK, state="pending") == 0
    # Histograms: one observation per completed partition, by kind and executor.
    a = {"kind": QUICK, "executor": "test_append"}
    b = {"kind": QUICK, "executor": "test_append_once"}
    assert value(after, "hxo_partition_duration_seconds_count", **a) == 4
    assert value(after, "hxo_partition_duration_seconds_count", **b) == 3
    assert value(after, "hxo_partition_duration_seconds_bucket", **a, le="+Inf") == 4
    assert value(after, "hxo_partition_duration_seconds_bucket", **a, le="3600.0") == 4
    stored_ms = sum(
        Partition.objects.filter(run=run, stage__stage_id="a").values_list("duration_ms", flat=True)
    )
    assert value(after, "hxo_partition_duration_seconds_sum", **a) == pytest.approx(
        stored_ms / 1000
    )
    assert value(after, "hxo_partition_claim_latency_seconds_count", kind=QUICK) == 7
    # The finished run's stages were rolled up once; a second scrape reads the same figures.
    assert StageRollup.objects.filter(stage__run=run).count() == 2
    assert scrape() == after


def test_a_breached_slo_is_counted(test_kinds, tmp_path, operator, scrape) -> None:
    doc = stage("a", tmp_path, items=3, kind=QUICK)
    doc["slo_ms"] = 1
    (tmp_path / "source.txt").write_text("x" * 10)
    run = drain(services.run_apply(plan=plan_of(operator, doc), actor=operator))
    assert run.slo_breached and sorted(effects(tmp_path, "a")) == [0, 1, 2]
    samples = scrape()
    assert value(samples, "hxo_run_slo_breaches_total") == 1
    assert value(samples, "hxo_stage_slo_breaches_total", kind=QUICK) == 1


def test_a_running_stage_past_its_slo_shows_now(test_kinds, tmp_path, operator, scrape) -> None:
    doc = stage("a", tmp_path, items=2, kind=QUICK)
    doc["slo_ms"] = 1
    run = partitioned(services.run_apply(plan=plan_of(operator, doc), actor=operator))
    run.run_stages.update(started_at=timezone.now() - timezone.timedelta(seconds=5))
    assert value(scrape(), "hxo_stages_over_slo", kind=QUICK) == 1


def test_reconciler_passes_and_skips_are_counted(scrape) -> None:
    assert value(scrape(), "hxo_reconciler_passes_total") == 0
    tasks.reconcile()
    tasks.reconcile()
    Lease.objects.filter(name="reconciler").update(
        owner="someone-else", expires_at=timezone.now() + timezone.timedelta(minutes=1)
    )
    assert "skipped" in tasks.reconcile()
    samples = scrape()
    assert value(samples, "hxo_reconciler_passes_total") == 2
    assert value(samples, "hxo_reconciler_skipped_total") == 1
    last = value(samples, "hxo_reconciler_last_pass_timestamp_seconds")
    assert abs(last - timezone.now().timestamp()) < 60


def test_an_expired_lease_repaired_by_the_reconciler_is_counted(
    test_kinds, tmp_path, operator, scrape
) -> None:
    run = partitioned(
        services.run_apply(
            plan=plan_of(operator, stage("a", tmp_path, items=2, kind=QUICK)), actor=operator
        )
    )
    Partition.objects.filter(run=run, index=0).update(
        state=PartitionState.RUNNING,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timezone.timedelta(minutes=1),
        attempts=1,
        fence=1,
    )
    run.run_stages.update(pending=1, running=1)
    tasks.reconcile()
    assert value(scrape(), "hxo_reconciler_leases_expired_total") == 1
    assert Partition.objects.get(run=run, index=0).state == PartitionState.PENDING


# --- bounded -----------------------------------------------------------------------------------


def test_a_scrape_costs_the_same_queries_for_one_run_or_many(
    test_kinds, tmp_path, operator, scrape, settings
) -> None:
    settings.HXO_RETRY_BACKOFF_MS = 0

    def runs(n: int) -> None:
        for i in range(n):
            directory = tmp_path / f"r{Partition.objects.count()}-{i}"
            directory.mkdir()
            plan = plan_of(
                operator,
                stage("a", directory, items=3, kind=QUICK),
                stage("b", directory, items=2, kind=TEST_KIND, depends_on=["a"]),
            )
            drain(services.run_start_dry_run(plan=plan, actor=operator))
        # And one still running, aggregated live.
        services.run_apply(
            plan=plan_of(operator, stage("c", tmp_path, items=4, kind=QUICK)), actor=operator
        )

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as rolling:
            scrape()
        with CaptureQueriesContext(connection) as steady:
            scrape()
        return len(rolling.captured_queries), len(steady.captured_queries)

    runs(1)
    small = queries()
    runs(6)
    large = queries()
    assert large == small, (small, large)
    assert small[1] <= 12
    samples = scrape()
    assert value(samples, "hxo_partitions_succeeded_total", kind=QUICK) == 7 * 3
    assert (
        value(
            samples, "hxo_partition_duration_seconds_count", kind=TEST_KIND, executor="test_append"
        )
        == 7 * 2
    )


def test_prometheus_gets_openmetrics_when_it_asks(client, settings, scrape) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse

    plain = scrape()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT=accept)
    assert response["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in parse(response.content.decode())}
    assert families["hxo_partitions_claimed"].type == "counter"
    assert families["hxo_partition_duration_seconds"].type == "histogram"
    assert value(plain, "hxo_runs", state="pending") == 0


def test_the_readme_lists_every_metric(scrape) -> None:
    from django.conf import settings as django_settings

    readme = (Path(django_settings.BASE_DIR) / "README.md").read_text()
    families = {
        family.name for family in text_string_to_metric_families(metrics.exposition()[0].decode())
    }
    missing = sorted(name for name in families if f"`{name}" not in readme)
    assert not missing, missing
