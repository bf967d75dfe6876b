"""
What the engine is built from: a store by the scheme of its URL, a fetcher by
the kind of its job (one table each), and the engine on them.  This is where
a new store or fetch kind is plugged in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from refresherd.config import JobConfig
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job
from refresherd.core.outage import DEFAULT_OUTAGE_BYTES, Outage
from refresherd.core.refresher import Refresher
from refresherd.core.warmer import Warmer
from refresherd.entry import largest_entry
from refresherd.errors import ConfigError
from refresherd.fetchers.http import HTTPFetcher, make_http_client
from refresherd.fetchers.python import PythonFetcher, make_threadpool, resolve_callable
from refresherd.interfaces import IFetcher, IStore
from refresherd.metrics import metrics_for
from refresherd.run.services import Engine, ThreadPools
from refresherd.stores.memcached.store import memcached_store_from_url
from refresherd.stores.memory import memory_store_from_url
from refresherd.stores.near import DEFAULT_TTL as DEFAULT_NEAR_TTL
from refresherd.stores.near import NearCache, near_options
from refresherd.stores.reader import DEFAULT_MAX_ENTRY_BYTES
from refresherd.stores.redis_urls import redis_store_from_url
from refresherd.stores.sentinel import sentinel_store_from_url

StoreFactory = Callable[[str, Any, str, Mapping[str, str], int], IStore]
"""
Given a URL (near-cache options taken out), the reactor, the namespace, the
environment and the largest entry a shared store reads (L{max_entry_bytes}).
"""


def _memory(
    url: str, reactor: Any, namespace: str, environ: Mapping[str, str], max_entry_bytes: int
) -> IStore:
    return memory_store_from_url(url, reactor)


def _redis(
    url: str, reactor: Any, namespace: str, environ: Mapping[str, str], max_entry_bytes: int
) -> IStore:
    return redis_store_from_url(url, namespace, reactor, environ, max_entry_bytes)


def _sentinel(
    url: str, reactor: Any, namespace: str, environ: Mapping[str, str], max_entry_bytes: int
) -> IStore:
    return sentinel_store_from_url(url, namespace, reactor, environ, max_entry_bytes)


def _memcached(
    url: str, reactor: Any, namespace: str, environ: Mapping[str, str], max_entry_bytes: int
) -> IStore:
    return memcached_store_from_url(url, namespace, reactor, max_entry_bytes)


STORES: dict[str, tuple[StoreFactory, float | None]] = {
    "memory": (_memory, None),
    "redis": (_redis, DEFAULT_NEAR_TTL),
    "rediss": (_redis, DEFAULT_NEAR_TTL),  # Redis over TLS
    "unix": (_redis, DEFAULT_NEAR_TTL),  # Redis on a UNIX socket
    "redis+sentinel": (_sentinel, DEFAULT_NEAR_TTL),  # the primary Redis Sentinel names
    "rediss+sentinel": (_sentinel, DEFAULT_NEAR_TTL),  # the same, over TLS
    # memcached tells no one of changes: a near cache there serves what other
    # processes changed up to near_ttl late, so it is off unless asked for.
    "memcached": (_memcached, 0.0),
}
"""Each store scheme: its factory, and its default near_ttl (None: no near cache possible)."""


def max_entry_bytes(jobs: Mapping[str, JobConfig]) -> int:
    """
    The largest entry a shared store reads: one of the largest
    C{max_value_bytes} of the jobs, with its metadata.  Anything larger was not
    written by a process of this configuration, and reads as absent.
    """
    return largest_entry(max((job.max_value_bytes for job in jobs.values()), default=0))


def make_store(
    url: str,
    where: str,
    reactor: Any,
    namespace: str,
    environ: Mapping[str, str],
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> IStore:
    """
    The store of a C{--store} URL, not started: building one does no I/O, so
    the parent of C{--workers} can check the URL and throw the store away.
    A shared store reads entries of at most C{max_entry_bytes}.
    """
    scheme = url.partition("://")[0]
    if scheme not in STORES:
        *others, last = [f"{name}://" for name in STORES]
        known = f"{', '.join(others)} or {last}"
        raise ConfigError(f"{where}: unknown store {url.partition(':')[0]!r}; use {known}")
    factory, default_near_ttl = STORES[scheme]
    try:
        if default_near_ttl is None:
            return factory(url, reactor, namespace, environ, max_entry_bytes)
        url, _ = outage_option(url)
        shared_url, near_ttl, near_bytes = near_options(url, default_near_ttl)
        store = factory(shared_url, reactor, namespace, environ, max_entry_bytes)
        if near_ttl == 0:
            return store
        return NearCache(store, reactor, near_ttl, near_bytes)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def outage_option(url: str) -> tuple[str, int]:
    """
    C{url} without its C{outage_bytes} parameter, and its value: what the values
    fetched while a shared store does not answer may take in this process
    (a number of bytes, 0 keeps none; default L{DEFAULT_OUTAGE_BYTES}).
    L{ValueError} with a one-line message when it is not such a number.
    """
    base, _, query = url.partition("?")
    params = query.split("&") if query else []
    given = [p.partition("=")[2] for p in params if p.partition("=")[0] == "outage_bytes"]
    if len(given) > 1:
        raise ValueError("the store URL gives outage_bytes twice")
    if given and not (given[0].isascii() and given[0].isdigit() and len(given[0]) <= 15):
        raise ValueError(f"outage_bytes must be a number of bytes, not {given[0][:40]!r}")
    rest = "&".join(p for p in params if p.partition("=")[0] != "outage_bytes")
    return (base + "?" + rest if rest else base), int(given[0]) if given else DEFAULT_OUTAGE_BYTES


def outage_bytes(url: str) -> int:
    """The C{outage_bytes} of a store URL already checked by L{make_store} (0: memory://)."""
    if STORES.get(url.partition("://")[0], (None, None))[1] is None:
        return 0
    return outage_option(url)[1]


STORE_KINDS = {"rediss": "redis", "unix": "redis", "rediss+sentinel": "redis+sentinel"}
"""The store schemes that are another's kind (C{GET /v1/status}); the others are their own."""


def store_kind(url: str) -> str:
    """The kind of store of a store URL: memory, redis, redis+sentinel or memcached."""
    scheme = urlsplit(url).scheme
    return STORE_KINDS.get(scheme, scheme)


def describe_store(url: str) -> str:
    """A store URL for a log line: its scheme, hosts and path, never a password or option."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


FetcherFactory = Callable[[JobConfig, str, Any, ThreadPools, Any], IFetcher]
"""Given the job, where it is configured, the reactor, the thread pools and the HTTP client."""


def _http(job: JobConfig, where: str, reactor: Any, pools: ThreadPools, client: Any) -> IFetcher:
    return HTTPFetcher(job, client, reactor)


def _python(job: JobConfig, where: str, reactor: Any, pools: ThreadPools, client: Any) -> IFetcher:
    try:
        function = resolve_callable(job.callable or "")
    except ValueError as e:
        raise ConfigError(f"{where}: jobs.{job.name}.callable: {e}") from None
    pool = make_threadpool(job)
    pools.pools.append(pool)
    return PythonFetcher(job, reactor, pool, function)


FETCHERS: dict[str, FetcherFactory] = {"http": _http, "python": _python}
"""Each fetch kind (a job's C{fetch}) and the factory of its fetcher."""


def build_engine(
    config_jobs: Mapping[str, JobConfig],
    source: str,
    store: IStore,
    namespace: str,
    reactor: Any,
    multiprocess_dir: str | None = None,
    outage_bytes: int = DEFAULT_OUTAGE_BYTES,
    hot: HotKeysRegistry | None = None,
    warm: bool = False,
) -> Engine:
    """
    The jobs and the refresher on C{store}, with their thread pools and metrics,
    keeping up to C{outage_bytes} of values while C{store} does not answer, and
    the process's C{hot} keys (default: L{HotKeysRegistry}'s defaults); with
    C{warm}, the jobs' warm lists kept ready (one process of a fleet started
    together: the single one, or the parent of C{--workers}).
    """
    pools = ThreadPools()
    client = make_http_client(reactor)

    def make_job(job: JobConfig, pools: ThreadPools) -> Job:
        return Job(job, FETCHERS[job.fetch](job, source, reactor, pools, client))

    jobs = {name: make_job(job, pools) for name, job in config_jobs.items()}
    metrics = metrics_for(jobs, multiprocess_dir, reactor.seconds)
    hot = HotKeysRegistry() if hot is None else hot
    refresher = Refresher(
        store, jobs, reactor, namespace, metrics, outage=Outage(reactor, outage_bytes), hot=hot
    )
    warmer = (
        Warmer(refresher, reactor) if warm and any(j.warm for j in config_jobs.values()) else None
    )
    return Engine(refresher, pools, hot, warmer, make_job=make_job, warms=warm)
