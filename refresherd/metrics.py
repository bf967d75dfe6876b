"""
The Prometheus metrics (docs/README.md, "`GET /metrics` (admin listener)"), on
a registry of their own.

Label values come only from the configuration and route templates, never
from keys or argument values: a job that is not configured counts as
C{job="_unknown"}.

With C{--workers}, every worker process runs in prometheus-client's
multiprocess mode (C{PROMETHEUS_MULTIPROC_DIR}, set by the parent before the
worker starts): its values live in files of that directory, and C{/metrics}
reports the sum over all workers, those that exited included (their counts
are not lost), plus the parent's own (its admin API purges and refreshes).
The gauges count only live workers (C{livesum}).

The two metrics every request moves, C{refresherd_requests_total} and
C{refresherd_http_request_duration_seconds}, are tallied in plain numbers
(L{_Tally}): prometheus-client's own take a lock per value and, in a worker,
write to its file each time, a tenth of a hit.  In one process the tallies
are handed to the registry when it is scraped; in a worker, L{Metrics.flush}
adds them to prometheus-client's values in the shared directory, every
L{FLUSH_INTERVAL} seconds and when the worker stops.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from refresherd.core.recent import Recent, Tally

UNKNOWN_JOB = "_unknown"

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_AGE = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)


REQUESTS = ("refresherd_requests", "Answers given, by job and status.", ("job", "status"))
HTTP_DURATION = (
    "refresherd_http_request_duration_seconds",
    "Duration of HTTP requests, by route template and status code.",
    ("route", "code"),
)
"""The metrics every request moves: name, help and label names."""

FLUSH_INTERVAL = 1.0
"""In a worker, seconds between writes of the hot metrics' tallies to the shared directory."""

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that puts prometheus-client in multiprocess mode."""


@attrs.define(slots=False)
class Metrics:
    """
    The metrics of one process.

    @ivar multiprocess_dir: in a worker of C{--workers}, the directory where
        every worker writes its values, this one's included; L{render} then
        reports their sum.
    @ivar workers_dir: in the parent of C{--workers}, that directory, once it
        has made it; L{render} then reports the workers' sum plus its own.
    @ivar recent: what each job did over the last minute (C{GET /v1/status}),
        fed with the answers and fetch attempts counted here.
    """

    jobs: frozenset[str]
    registry: CollectorRegistry = attrs.field(factory=lambda: CollectorRegistry(auto_describe=True))
    multiprocess_dir: str | None = None
    workers_dir: str | None = None
    _tally: _Tally = attrs.field(init=False, repr=False, factory=lambda: _Tally())
    """The hot metrics: all of them in one process; in a worker, those not flushed yet."""
    process: ProcessCollector = attrs.field(factory=lambda: ProcessCollector(registry=None))
    """This process's C{process_*} metrics (CPU, memory, file descriptors)."""
    hot_keys: Callable[[], Mapping[str, int]] = lambda: {}
    """How many keys each job's hot keys sketch holds, as the admin API shows them."""
    _hot_gauge: _HotKeysGauge = attrs.field(init=False, repr=False)
    seconds: Callable[[], float] = time.time
    """The clock of L{recent}."""
    recent: Recent = attrs.field(init=False, repr=False)
    _running: dict[str, tuple[Any, Any]] = attrs.field(init=False, repr=False)
    reload_successful: bool = attrs.field(default=True, init=False)
    """Whether the last reload of the configuration succeeded (true before any)."""
    reload_success_at: float = attrs.field(default=0.0, init=False)
    """When the configuration was last loaded: at start, then by each reload that succeeded."""

    def __attrs_post_init__(self) -> None:
        self.recent = Recent(sorted(self.jobs | {UNKNOWN_JOB}), self.seconds)
        self.reload_success_at = self.seconds()
        r = self.registry
        r.register(self.process)
        r.register(_ReloadGauges(self))
        self._hot_gauge = _HotKeysGauge(self)
        r.register(self._hot_gauge)
        if self.multiprocess_dir is None:
            r.register(self._tally)
        else:
            self.requests = Counter(*REQUESTS, registry=r)
            self.http_duration = Histogram(*HTTP_DURATION, buckets=_SECONDS, registry=r)
        self.fetches = Counter(
            "refresherd_fetches", "Fetch attempts, by outcome.", ["job", "outcome"], registry=r
        )
        self.refreshes = Counter(
            "refresherd_refreshes",
            "Fetches started (one per key however many wait), by why: request, early, warm, "
            "hot, purge.",
            ["job", "reason"],
            registry=r,
        )
        self.origin_tags_dropped = Counter(
            "refresherd_origin_tags_dropped",
            "Tags an origin sent (Surrogate-Key) that were dropped: over the bounds.",
            ["job"],
            registry=r,
        )
        self.fetch_duration = Histogram(
            "refresherd_fetch_duration_seconds",
            "Duration of fetch attempts.",
            ["job"],
            buckets=_SECONDS,
            registry=r,
        )
        self.in_flight = Gauge(
            "refresherd_fetches_in_flight",
            "Fetch attempts running.",
            ["job"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.coalesced = Counter(
            "refresherd_coalesced",
            "Requests that joined a fetch already running, here or elsewhere.",
            ["job"],
            registry=r,
        )
        self.early_refreshes = Counter(
            "refresherd_early_refreshes", "XFetch early refreshes started.", ["job"], registry=r
        )
        self.store_errors = Counter(
            "refresherd_store_errors", "Store operations that failed.", ["operation"], registry=r
        )
        self.purged = Counter(
            "refresherd_purged", "Keys, jobs and tags purged.", ["kind"], registry=r
        )
        self.stale_age = Histogram(
            "refresherd_stale_served_age_seconds",
            "How far past freshness the stale values served were.",
            ["job"],
            buckets=_AGE,
            registry=r,
        )
        self.queue_depth = Gauge(
            "refresherd_queue_depth",
            "Fetches waiting for a concurrency slot.",
            ["job"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._running = {
            job: (self.in_flight.labels(job=job), self.queue_depth.labels(job=job))
            for job in self.jobs
        }

    def set_jobs(self, jobs: Iterable[str]) -> None:
        """
        The jobs after a reload: answers of another job count as C{unknown_job};
        a removed job's counters stay as they were, as Prometheus expects.
        """
        self.jobs = frozenset(jobs)
        self.recent.add_jobs(self.jobs)
        for job in self.jobs - self._running.keys():
            self._running[job] = (self.in_flight.labels(job=job), self.queue_depth.labels(job=job))

    def reloaded(self, successful: bool) -> None:
        """A reload of the configuration ended: C{successful}, or refused."""
        self.reload_successful = successful
        if successful:
            self.reload_success_at = self.seconds()

    def count_request(self, job: str, status: str) -> None:
        """One answer of C{job} with C{status}."""
        key = (job if job in self.jobs else UNKNOWN_JOB, status)
        counts = self._tally.requests
        counts[key] = counts.get(key, 0) + 1
        self.recent.answer(key[0], status)

    def count_fetch(self, job: str, outcome: str, took: float, error: str | None = None) -> None:
        """
        One fetch attempt of C{job} that ended with C{outcome} after C{took}
        seconds; a failed one's C{error} as callers may read it.
        """
        self.fetches.labels(job=job, outcome=outcome).inc()
        self.fetch_duration.labels(job=job).observe(took)
        self.recent.fetch(job if job in self.jobs else UNKNOWN_JOB, took, error)

    def tallies(self) -> dict[str, Tally]:
        """
        What each job did over the last minute in this process, with the
        fetches it runs and those waiting for a slot now.
        """
        tallies = self.recent.tallies()
        for job, (in_flight, queued) in self._running.items():
            tally = tallies[job]
            # The gauges' values in this process (in a worker too: what it wrote).
            tally.in_flight = max(0, int(in_flight._value.get()))
            tally.queued = max(0, int(queued._value.get()))
        return tallies

    def observe_http(self, route: str, code: int, seconds: float) -> None:
        """One HTTP request of C{route} answered with C{code} in C{seconds}."""
        key = (route, code)
        counts = self._tally.http.get(key)
        if counts is None:
            counts = self._tally.http[key] = [0.0] * (len(_SECONDS) + 2)
        counts[bisect.bisect_left(_SECONDS, seconds)] += 1
        counts[-1] += seconds

    def flush(self) -> None:
        """
        In a worker, add the tallies of the hot metrics to this process's
        values in the shared directory, and start them again from zero
        (elsewhere nothing: the registry reads the tallies themselves).
        """
        if self.multiprocess_dir is None:
            return
        tally, self._tally = self._tally, _Tally()
        for (job, status), count in tally.requests.items():
            self.requests.labels(job=job, status=status).inc(count)
        for (route, code), counts in tally.http.items():
            child = self.http_duration.labels(route=route, code=str(code))
            # The histogram's own values, each a bucket's count (not cumulative)
            # and the sum, as its observe() adds to them, many at once.
            for value, observed in zip(child._buckets, counts[:-1], strict=True):
                if observed:
                    value.inc(observed)
            child._sum.inc(counts[-1])

    def render(self) -> bytes:
        """The Prometheus text format: of this process, or the sum over all workers."""
        if self.multiprocess_dir is not None:
            # This worker's values are in the directory (once flushed); its process's are not.
            self.flush()
            return render_multiprocess(self.multiprocess_dir, also=[self.process, self._hot_gauge])
        if self.workers_dir is not None:
            return render_multiprocess(self.workers_dir, also=self.registry)
        return generate_latest(self.registry)


@attrs.define(eq=False)
class _Tally:
    """
    A collector of the hot metrics counted in plain numbers (label values
    bounded: jobs, statuses, route templates, codes).

    @ivar http: per route and code, the count of each bucket of C{_SECONDS}
        (a value falls in the first whose bound is at least it; the one after
        the last is C{+Inf}), then the sum of the values.
    """

    requests: dict[tuple[str, str], int] = attrs.field(factory=dict)
    http: dict[tuple[str, int], list[float]] = attrs.field(factory=dict)

    def collect(self) -> Iterator[Metric]:
        name, documentation, labels = REQUESTS
        requests = CounterMetricFamily(name, documentation, labels=labels)
        for values, count in sorted(self.requests.items()):
            requests.add_metric(values, count)
        yield requests
        name, documentation, labels = HTTP_DURATION
        http = HistogramMetricFamily(name, documentation, labels=labels)
        bounds = [floatToGoString(b) for b in (*_SECONDS, float("inf"))]
        for (route, code), counts in sorted(self.http.items()):
            cumulative, buckets = 0.0, []
            for bound, observed in zip(bounds, counts[:-1], strict=True):
                cumulative += observed
                buckets.append((bound, cumulative))
            http.add_metric((route, str(code)), buckets, counts[-1])
        yield http


@attrs.define(eq=False)
class _HotKeysGauge:
    """
    C{refresherd_hot_keys}: the keys each configured job's hot keys sketch
    holds, read when scraped (never written to the shared directory: the
    view it reads is already the workers' merged).
    """

    metrics: Metrics

    def collect(self) -> Iterator[Metric]:
        sizes = self.metrics.hot_keys()
        gauge = GaugeMetricFamily(
            "refresherd_hot_keys", "Keys each job's hot keys sketch holds.", labels=["job"]
        )
        for job in sorted(self.metrics.jobs):
            gauge.add_metric([job], sizes.get(job, 0))
        yield gauge


@attrs.define(eq=False)
class _ReloadGauges:
    """
    C{refresherd_config_last_reload_successful} and
    C{refresherd_config_last_reload_success_timestamp_seconds}, as Prometheus
    names its own.
    """

    metrics: Metrics

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "refresherd_config_last_reload_successful",
            "Whether the last reload of the configuration succeeded (1 before any).",
            value=1.0 if self.metrics.reload_successful else 0.0,
        )
        yield GaugeMetricFamily(
            "refresherd_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded: at start, or by a reload that succeeded.",
            value=self.metrics.reload_success_at,
        )


def render_multiprocess(path: str, also: Any = None) -> bytes:
    """
    The Prometheus text format of the sum of the values every worker wrote in
    C{path}, and of those of the collector (or registry, or list of them) C{also}.
    """
    collectors: list[Any] = [MultiProcessCollector(None, path=path)]
    if isinstance(also, list):
        collectors.extend(also)
    elif also is not None:
        collectors.append(also)
    registry = CollectorRegistry()
    registry.register(_Summed(collectors))
    return generate_latest(registry)


@attrs.define(eq=False)
class _Summed:
    """A collector of the sum of the samples of C{collectors}, metric by metric."""

    collectors: list[Any]

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for collector in self.collectors:
            for family in collector.collect():
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                    values[family.name] = {}
                summed = values[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # a time, not a count: meaningless summed
                    labels = tuple(sorted(sample.labels.items()))
                    summed[sample.name, labels] = (
                        summed.get((sample.name, labels), 0.0) + sample.value
                    )
        for name, family in families.items():
            for (sample, labels), value in values[name].items():
                family.add_sample(sample, dict(labels), value)
            yield family


def metrics_for(
    jobs: Iterable[str],
    multiprocess_dir: str | None = None,
    seconds: Callable[[], float] = time.time,
) -> Metrics:
    return Metrics(frozenset(jobs), multiprocess_dir=multiprocess_dir, seconds=seconds)
