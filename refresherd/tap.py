"""
The twistd plugin: options, configuration, and the wired service.

This is the only module that knows every concrete class and the only one that
touches the global reactor.  Everything that can be wrong with the
configuration, the options or the endpoints (a port in use included) is found
here, in L{makeService}, and stops start-up with one line and exit status 1:
twistd would print its whole usage text for a C{UsageError} and a traceback
for an exception in C{startService}.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from refresherd.admin import AdminAPI
from refresherd.api import PublicAPI
from refresherd.auth import Authorizer
from refresherd.config import Config, JobConfig, load_config
from refresherd.errors import ConfigError
from refresherd.fetchers.http import HTTPFetcher, make_http_client
from refresherd.fetchers.python import PythonFetcher, make_threadpool, resolve_callable
from refresherd.interfaces import IFetcher, IStore
from refresherd.logs import JSONLinesObserver
from refresherd.metrics import metrics_for
from refresherd.refresher import Job, Refresher
from refresherd.site import LimitedSite
from refresherd.stores.memory import memory_store_from_url

CLOSE_TIMEOUT = 5.0
"""Seconds that answers given during shutdown have to reach their clients."""


class Options(usage.Options):
    """
    Every option is taken as text and checked in L{makeService}, so that a
    mistake ends in one clear line rather than twistd's usage text.
    """

    synopsis = "[options]"
    optParameters = [
        ["config", None, None, "TOML configuration file [default: ./refresherd.toml if present]"],
        ["listen", None, None, "public API endpoint [default: tcp:8080:interface=127.0.0.1]"],
        [
            "admin-listen",
            None,
            None,
            "admin API and /metrics endpoint, or 'none' to serve them on the public listener "
            "[default: tcp:8081:interface=127.0.0.1]",
        ],
        ["store", None, None, "memory://[?max_bytes=N] [default: memory://]"],
        ["workers", None, "1", "processes sharing the listening sockets"],
        ["log-format", None, "text", "text or json (one object per line)"],
    ]


@attrs.frozen
class Settings:
    """The configuration with the command line applied, and where each setting came from."""

    config: Config
    listen: tuple[str, str]
    admin_listen: tuple[str, str]
    store: tuple[str, str]
    workers: int
    log_format: str


def settings_from(options: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    config = load_config(options.get("config"), environ)
    source = config.source

    def pick(option: str, key: str, value: str) -> tuple[str, str]:
        given = options.get(option)
        return (given, f"--{option}") if given is not None else (value, f"{source}: {key}")

    workers_text = options.get("workers") or "1"
    if not workers_text.isdigit() or int(workers_text) < 1:
        raise ConfigError(f"--workers: not a positive whole number: {workers_text!r}")
    log_format = options.get("log-format") or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format: must be 'text' or 'json', not {log_format!r}")
    return Settings(
        config=config,
        listen=pick("listen", "server.listen", config.server.listen),
        admin_listen=pick("admin-listen", "server.admin_listen", config.server.admin_listen),
        store=pick("store", "store.url", config.store.url),
        workers=int(workers_text),
        log_format=log_format,
    )


def make_store(url: str, where: str, reactor: Any) -> IStore:
    scheme = url.partition("://")[0]
    if scheme == "memory":
        try:
            return memory_store_from_url(url, reactor)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if scheme in ("redis", "memcached"):
        raise ConfigError(f"{where}: the {scheme}:// store is not available yet; use memory://")
    raise ConfigError(f"{where}: unknown store {url!r}; use memory://")


@attrs.define(eq=False)
class ThreadPools(Service):
    """The python jobs' thread pools, started and stopped with the service."""

    pools: list[ThreadPool] = attrs.field(factory=list)
    _log: Logger = attrs.field(factory=Logger, init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def startService(self) -> None:
        Service.startService(self)
        for pool in self.pools:
            pool.start()

    def stopService(self) -> None:
        """
        Stop the idle pools.  A pool whose thread is still stuck in a job after
        the drain is left alone: its threads are daemons and end with the
        process, which would otherwise wait for them for ever.
        """
        Service.stopService(self)
        for pool in self.pools:
            if pool.working:
                self._log.warn("Thread pool {name} still busy at exit", name=pool.name)
            else:
                pool.stop()


def make_fetcher(
    job: JobConfig, where: str, reactor: Any, pools: ThreadPools, client: Any
) -> IFetcher:
    if job.fetch == "http":
        return HTTPFetcher(job, client, reactor)
    try:
        function = resolve_callable(job.callable or "")
    except ValueError as e:
        raise ConfigError(f"{where}: jobs.{job.name}.callable: {e}") from None
    pool = make_threadpool(job)
    pools.pools.append(pool)
    return PythonFetcher(job, reactor, pool, function)


def listen(reactor: Any, description: str, where: str, site: LimitedSite) -> IListeningPort:
    """Listen on an endpoint now, so that a bad endpoint or a port in use stops start-up."""
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:
        raise ConfigError(f"{where}: not a valid endpoint {description!r}: {e}") from None
    result: list[Any] = []
    endpoint.listen(site).addBoth(result.append)
    if not result:
        raise ConfigError(f"{where}: endpoint {description!r} does not listen at once")
    if isinstance(result[0], Failure):
        message = " ".join(str(result[0].value).split())
        raise ConfigError(f"{where}: cannot listen on {description!r}: {message}")
    port: IListeningPort = result[0]
    return port


@attrs.define(eq=False)
class RefresherdService(MultiService):
    """
    The running service.  Stopping it stops listening first, then lets the
    fetches in flight finish (answering the requests that wait on them), then
    stops the thread pools.
    """

    refresher: Refresher
    pools: ThreadPools
    ports: list[IListeningPort]
    sites: list[LimitedSite]
    log_observer: ILogObserver | None = None
    on_started: Callable[[], None] = lambda: None
    _log: Logger = attrs.field(factory=Logger, init=False)

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        self.pools.setServiceParent(self)
        self.refresher.setServiceParent(self)

    def startService(self) -> None:
        MultiService.startService(self)
        self.on_started()
        for name, port in zip(("public API", "admin API"), self.ports, strict=False):
            self._log.info(
                "refresherd: {name} listening on {address}", name=name, address=describe(port)
            )

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        MultiService.setServiceParent(self, parent)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        yield defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in self.ports])
        yield self.refresher.stopService()
        yield defer.gatherResults([site.close_connections(CLOSE_TIMEOUT) for site in self.sites])
        self.pools.stopService()


def describe(port: IListeningPort) -> str:
    """C{host:port} of a TCP port, the path of a UNIX one."""
    address: Any = port.getHost()
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    return str(getattr(address, "name", address))


def handle_shutdown_signals(reactor: Any) -> None:
    """
    The first SIGTERM or SIGINT stops the service gracefully; a second one
    ends the process at once (twistd's own handler would only log
    C{ReactorNotRunning}).
    """

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, first)
    signal.signal(signal.SIGINT, first)


def build(
    options: Mapping[str, Any], reactor: Any, environ: Mapping[str, str]
) -> RefresherdService:
    settings = settings_from(options, environ)
    config = settings.config
    url, where = settings.store
    if settings.workers > 1:
        raise ConfigError(
            f"--workers {settings.workers}: needs a shared store; with memory:// each worker "
            "would hold its own cache"
        )
    store = make_store(url, where, reactor)
    pools = ThreadPools()
    client = make_http_client(reactor)
    jobs = {
        name: Job(job, make_fetcher(job, config.source, reactor, pools, client))
        for name, job in config.jobs.items()
    }
    metrics = metrics_for(jobs)
    refresher = Refresher(store, jobs, reactor, config.store.namespace, metrics)
    authorizer = Authorizer.from_config(config.auth)
    admin = AdminAPI(authorizer, metrics)
    admin_listen, admin_where = settings.admin_listen
    mounted = admin_listen == "none"
    public = PublicAPI(
        refresher,
        authorizer,
        config.server,
        metrics,
        reactor,
        fallback=admin.resource() if mounted else None,
    )
    public_site = LimitedSite(public.resource(), public.body_limit, reactor)
    sites = [public_site]
    ports = [listen(reactor, settings.listen[0], settings.listen[1], public_site)]
    if not mounted:
        admin_site = LimitedSite(
            admin.resource(), lambda method, path: config.server.max_body_bytes, reactor
        )
        sites.append(admin_site)
        try:
            ports.append(listen(reactor, admin_listen, admin_where, admin_site))
        except ConfigError:
            ports[0].stopListening()
            raise
    return RefresherdService(
        refresher,
        pools,
        ports,
        sites,
        log_observer=JSONLinesObserver() if settings.log_format == "json" else None,
        on_started=lambda: reactor.callWhenRunning(handle_shutdown_signals, reactor),
    )


def makeService(options: Mapping[str, Any]) -> IService:
    """twistd's entry point: the service, or one line and exit status 1."""
    from twisted.internet import reactor

    try:
        return build(options, reactor, os.environ)
    except ConfigError as e:
        raise SystemExit(f"refresherd: {e}") from None
