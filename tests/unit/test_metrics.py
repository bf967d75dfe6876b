"""
The metrics of docs/README.md, "`GET /metrics` (admin listener)", read from
C{/metrics} as Prometheus reads them: exactly the names, types and labels of
that table (plus the process collector), and counts that agree with known
traffic driven through the API on task.Clock.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from refresherd.config import AuthConfig, JobConfig, ServerConfig
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.http.admin import AdminAPI
from refresherd.http.auth import Authorizer
from refresherd.http.public import PublicAPI
from refresherd.metrics import _SECONDS, HTTP_DURATION, REQUESTS, metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher, UnreachableStore
from tests.stub_treq import StubTreq

DOCUMENTED = {
    "refresherd_requests": ("counter", {"job", "status"}),
    "refresherd_fetches": ("counter", {"job", "outcome"}),
    "refresherd_origin_tags_dropped": ("counter", {"job"}),
    "refresherd_refreshes": ("counter", {"job", "reason"}),
    "refresherd_fetch_duration_seconds": ("histogram", {"job"}),
    "refresherd_fetches_in_flight": ("gauge", {"job"}),
    "refresherd_coalesced": ("counter", {"job"}),
    "refresherd_early_refreshes": ("counter", {"job"}),
    "refresherd_store_errors": ("counter", {"operation"}),
    "refresherd_purged": ("counter", {"kind"}),
    "refresherd_http_request_duration_seconds": ("histogram", {"route", "code"}),
    "refresherd_stale_served_age_seconds": ("histogram", {"job"}),
    "refresherd_queue_depth": ("gauge", {"job"}),
    "refresherd_hot_keys": ("gauge", {"job"}),
    "refresherd_config_last_reload_successful": ("gauge", set()),
    "refresherd_config_last_reload_success_timestamp_seconds": ("gauge", set()),
}
"""docs/README.md's metrics: each family (counters without C{_total}), its type and its labels."""

BASE = "http://127.0.0.1:8081"


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample C{name} with exactly C{labels}; 0 if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.fetchers = {"j": FakeFetcher(), "e": FakeFetcher()}
        configs = {
            "j": JobConfig(
                name="j",
                fetch="http",
                url="http://origin.test/{id}",
                args=("id",),
                tags=("t:{id}",),
                fresh=60.0,
                stale=600.0,
                timeout=5.0,
                retries=1,
                wait_timeout=30.0,
                concurrency=1,
                error_ttl=0.0,
            ),
            "e": JobConfig(
                name="e",
                fetch="http",
                url="http://origin.test/e/{id}",
                args=("id",),
                fresh=60.0,
                on_miss="empty",
            ),
        }
        self.metrics = metrics_for(configs)
        self.store = UnreachableStore(MemoryStore(self.clock), down=False)
        self.rand = 0.999
        self.refresher = Refresher(
            self.store,
            {name: Job(config, self.fetchers[name]) for name, config in configs.items()},
            self.clock,
            "rfd",
            self.metrics,
            random=lambda: self.rand,
        )
        authorizer = Authorizer.from_config(AuthConfig())
        self.public = StubTreq(
            PublicAPI(
                self.refresher, authorizer, ServerConfig(), self.metrics, self.clock
            ).resource()
        )
        self.admin = StubTreq(
            AdminAPI(self.refresher, authorizer, self.metrics, self.clock).resource()
        )
        self.sent: Counter[tuple[str, str]] = Counter()

    def get(self, path: str, route: str = "/v1/jobs/{job}") -> Any:
        d = self.public.get(BASE + path)
        self.public.flush()
        return d, route

    def answered(self, pending: tuple[Any, str], code: int) -> Any:
        d, route = pending
        self.public.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, code)
        self.sent[route, str(code)] += 1
        return json.loads(self.successResultOf(response.content()))

    def metrics_text(self) -> str:
        d = self.admin.get(BASE + "/metrics")
        self.admin.flush()
        return self.successResultOf(self.successResultOf(d).text())

    def test_exactly_the_documented_metrics_with_their_types_and_labels(self) -> None:
        found = families(self.metrics_text())
        ours = {name: family for name, family in found.items() if name.startswith("refresherd_")}
        self.assertEqual(set(ours), set(DOCUMENTED))
        for name, (kind, labels) in DOCUMENTED.items():
            self.assertEqual(ours[name].type, kind, name)
            for s in ours[name].samples:
                self.assertEqual(set(s.labels) - {"le"}, labels, (name, s))
        self.assertIn("process_cpu_seconds", found)
        self.assertIn("process_resident_memory_bytes", found)

    def test_the_hot_keys_gauge_counts_each_jobs_sketch_and_nothing_per_key(self) -> None:
        hot = HotKeysRegistry(capacity=2)
        self.metrics.hot_keys = hot.sizes
        for id in ("1", "2", "3"):
            hot.observe("j", f"rfd:j:v1:id={id}", {"id": id}, self.clock.seconds())
        text = self.metrics_text()
        self.assertEqual(sample(text, "refresherd_hot_keys", job="j"), 2)
        self.assertEqual(sample(text, "refresherd_hot_keys", job="e"), 0)
        self.assertNotIn("id=", text)

    def test_counts_agree_with_known_traffic(self) -> None:
        j = self.fetchers["j"]
        # Three concurrent misses share one fetch, which takes 0.5 s.
        misses = [self.get("/v1/jobs/j?id=1") for _ in range(3)]
        self.clock.advance(0.5)
        j.succeed()
        for pending in misses:
            self.assertEqual(self.answered(pending, 200)["status"], "miss")
        for _ in range(2):
            self.assertEqual(self.answered(self.get("/v1/jobs/j?id=1"), 200)["status"], "hit")
        # An early refresh (XFetch fires on a tiny random number), then a stale answer.
        self.rand = 1e-300
        self.assertEqual(self.answered(self.get("/v1/jobs/j?id=1"), 200)["status"], "hit")
        self.rand = 0.999
        j.succeed()
        self.clock.advance(70)
        self.assertEqual(self.answered(self.get("/v1/jobs/j?id=1"), 200)["status"], "stale")
        j.succeed()
        # Pending, and errors: an unknown job, bad arguments.
        self.assertEqual(self.answered(self.get("/v1/jobs/e?id=1"), 202)["status"], "pending")
        self.fetchers["e"].succeed()
        self.answered(self.get("/v1/jobs/nope"), 404)
        self.answered(self.get("/v1/jobs/j"), 400)
        # A fetch whose first attempt times out and whose retry fails: a 502.
        failing = self.get("/v1/jobs/j?id=2")
        self.clock.advance(5)
        self.clock.advance(1)  # the backoff before the retry
        j.fail()
        self.answered(failing, 502)
        # One fetch in flight and one queued behind it (concurrency 1).
        first, second = self.get("/v1/jobs/j?id=3"), self.get("/v1/jobs/j?id=4")
        text = self.metrics_text()
        self.assertEqual(sample(text, "refresherd_fetches_in_flight", job="j"), 1)
        self.assertEqual(sample(text, "refresherd_queue_depth", job="j"), 1)
        j.succeed()
        j.succeed()
        self.answered(first, 200)
        self.answered(second, 200)
        # The store goes away: a miss fetched locally, a purge refused.
        self.store.down = True
        local = self.get("/v1/jobs/j?id=5")
        j.succeed()
        self.answered(local, 200)
        d = self.admin.post(BASE + "/v1/purge", json={"tags": ["t:1"]})
        self.admin.flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        self.store.down = False
        d = self.admin.post(
            BASE + "/v1/purge", json={"keys": ["rfd:j:v1:id=1"], "jobs": ["j"], "tags": ["a", "b"]}
        )
        self.admin.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

        text = self.metrics_text()
        requests = {
            ("j", "miss"): 4,  # three coalesced, one local while the store was down
            ("j", "hit"): 3,
            ("j", "stale"): 1,
            ("e", "pending"): 1,
            ("_unknown", "error"): 1,
            ("j", "error"): 2,
        }
        requests[("j", "miss")] += 2  # ids 3 and 4
        for (job, status), count in requests.items():
            value = sample(text, "refresherd_requests_total", job=job, status=status)
            self.assertEqual(value, count, (job, status))
        fetches = {("j", "success"): 6, ("j", "timeout"): 1, ("j", "error"): 1, ("e", "success"): 1}
        for (job, outcome), count in fetches.items():
            self.assertEqual(
                sample(text, "refresherd_fetches_total", job=job, outcome=outcome), count, outcome
            )
        self.assertEqual(sample(text, "refresherd_fetch_duration_seconds_count", job="j"), 8)
        self.assertEqual(sample(text, "refresherd_fetch_duration_seconds_count", job="e"), 1)
        # The first fetch took 0.5 s and the timed-out attempt 5 s.
        self.assertEqual(
            sample(text, "refresherd_fetch_duration_seconds_bucket", job="j", le="0.5"), 7
        )
        self.assertEqual(sample(text, "refresherd_fetches_in_flight", job="j"), 0)
        self.assertEqual(sample(text, "refresherd_queue_depth", job="j"), 0)
        self.assertEqual(sample(text, "refresherd_coalesced_total", job="j"), 2)
        self.assertEqual(sample(text, "refresherd_early_refreshes_total", job="j"), 1)
        self.assertEqual(sample(text, "refresherd_store_errors_total", operation="get"), 1)
        self.assertEqual(sample(text, "refresherd_store_errors_total", operation="purge"), 1)
        for kind, count in {"key": 1, "job": 1, "tag": 2}.items():
            self.assertEqual(sample(text, "refresherd_purged_total", kind=kind), count, kind)
        self.assertEqual(sample(text, "refresherd_stale_served_age_seconds_count", job="j"), 1)
        self.assertEqual(  # served 10 s past freshness: in the 15 s bucket, not the 5 s one
            sample(text, "refresherd_stale_served_age_seconds_bucket", job="j", le="5.0"), 0
        )
        self.assertEqual(
            sample(text, "refresherd_stale_served_age_seconds_bucket", job="j", le="15.0"), 1
        )
        for (route, code), count in self.sent.items():
            value = sample(
                text, "refresherd_http_request_duration_seconds_count", route=route, code=code
            )
            self.assertEqual(value, count, (route, code))
        purges = sample(
            text, "refresherd_http_request_duration_seconds_count", route="/v1/purge", code="200"
        )
        self.assertEqual(purges, 1)


def test_tallied_metrics_read_as_prometheus_clients_own() -> None:
    """
    In one process the hot metrics are tallied in plain numbers; scraped,
    they read exactly as prometheus-client's Counter and Histogram of the same
    observations (less C{_created}), bucket bounds and the +Inf bucket included.
    """
    metrics = metrics_for(["j"])
    registry = CollectorRegistry()
    requests = PromCounter(*REQUESTS, registry=registry)
    http = Histogram(*HTTP_DURATION, buckets=_SECONDS, registry=registry)
    observations = [0.0, 0.001, 0.0011, 0.05, 0.7, 2.5, 60.0, 61.0, 1e9]
    for route, code in [("/v1/jobs/{job}", 200), ("/v1/jobs/{job}", 404), ("/healthz", 200)]:
        for seconds in observations:
            metrics.observe_http(route, code, seconds)
            http.labels(route=route, code=str(code)).observe(seconds)
    for job, status, times in [("j", "hit", 3), ("j", "miss", 1), ("nope", "error", 2)]:
        for _ in range(times):
            metrics.count_request(job, status)
        label = job if job == "j" else "_unknown"
        requests.labels(job=label, status=status).inc(times)

    def hot(text: str) -> list[tuple[str, list[tuple[str, str]], float]]:
        return sorted(
            (s.name, sorted(s.labels.items()), s.value)
            for family in text_string_to_metric_families(text)
            if family.name in {REQUESTS[0], HTTP_DURATION[0]}
            for s in family.samples
            if not s.name.endswith("_created")
        )

    ours = hot(metrics.render().decode())
    assert ours == hot(generate_latest(registry).decode())
    assert len(ours) == 3 * (len(_SECONDS) + 3) + 3  # buckets, +Inf, _count, _sum; 3 counters
