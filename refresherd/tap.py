"""
The twistd plugin: options, configuration, and the wired service.

This is the only module that knows every concrete class and the only one that
touches the global reactor.  Everything that can be wrong with the
configuration, the options or the endpoints (a port in use included) is found
here, in L{makeService}, and stops start-up with one line and exit status 1:
twistd would print its whole usage text for a C{UsageError} and a traceback
for an exception in C{startService}.

With C{--workers N} (N > 1) the process twistd started is the parent of N
workers (L{refresherd.workers}): it checks everything a worker will build,
binds the public listener, serves the admin listener, and supervises the
workers, each a C{twistd -n refresherd} of its own started with the internal
C{--worker-*} options.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer, task
from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from refresherd.admin import AdminAPI
from refresherd.api import PublicAPI
from refresherd.auth import Authorizer, is_loopback_ip
from refresherd.config import Config, JobConfig, load_config
from refresherd.errors import ConfigError
from refresherd.fetchers.http import HTTPFetcher, make_http_client
from refresherd.fetchers.python import PythonFetcher, make_threadpool, resolve_callable
from refresherd.interfaces import IFetcher, IStore
from refresherd.logs import JSONLinesObserver, LazyFlushFile, LogOutput, text_observer
from refresherd.metrics import FLUSH_INTERVAL, MULTIPROCESS_DIR, metrics_for
from refresherd.refresher import DRAIN_TIMEOUT, Job, Refresher
from refresherd.site import LimitedSite
from refresherd.stores.memcached import memcached_store_from_url
from refresherd.stores.memory import memory_store_from_url
from refresherd.stores.near import DEFAULT_TTL as DEFAULT_NEAR_TTL
from refresherd.stores.near import NearCache, near_options
from refresherd.stores.redis import redis_store_from_url
from refresherd.workers import (
    HeldForWorkers,
    Lifeline,
    Supervisor,
    WorkerLogObserver,
    WorkerOptions,
    adopt,
    connect_lifeline,
    hold,
    release,
    shareable,
    worker_arguments,
    worker_options,
    worker_text_observer,
)

CLOSE_TIMEOUT = 5.0
"""Seconds that answers given during shutdown have to reach their clients."""

ALLOW_MEMORY_WORKERS = "REFRESHERD_ALLOW_WORKERS_WITH_MEMORY"
"""
For refresherd's own tests only: set to C{1}, C{--workers} accepts the
memory store, so that the workers can be tested without a Redis.  Never in
production: each worker would keep a cache of its own.
"""

_INTERNAL = "internal, set by --workers for its worker processes"


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
        [
            "store",
            None,
            None,
            "memory://[?max_bytes=N], redis://[:password@]host:port/db or "
            "memcached://host:port[,host:port...][?item_limit=N] [default: memory://]",
        ],
        [
            "workers",
            None,
            "1",
            "processes sharing the public listener (TCP or UNIX; needs a shared store)",
        ],
        ["log-format", None, "text", "text or json (one object per line)"],
        ["worker-id", None, None, f"{_INTERNAL}: the worker's number"],
        ["worker-fd", None, None, f"{_INTERNAL}: the inherited listening socket"],
        ["worker-family", None, None, f"{_INTERNAL}: its address family, inet, inet6 or unix"],
        ["worker-lifeline", None, None, f"{_INTERNAL}: the lifeline to the parent"],
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
    worker: WorkerOptions | None = None
    """In a worker process, what its parent told it."""


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
        worker=worker_options(options),
    )


def require_shared_store(settings: Settings, environ: Mapping[str, str]) -> None:
    """
    C{--workers} with more than one worker needs a store the workers share:
    with C{memory://} each would hold a cache of its own, and a value would
    be fetched once per worker.  Every other scheme goes on to the store
    factory (L{make_store}), which knows whether it exists.
    (L{ALLOW_MEMORY_WORKERS} lets the memory store through, for tests only.)
    """
    url, _ = settings.store
    if settings.workers <= 1 or url.partition("://")[0] != "memory":
        return
    if environ.get(ALLOW_MEMORY_WORKERS) == "1":
        return
    raise ConfigError(
        f"--workers {settings.workers}: needs a shared store; with memory:// each worker "
        "would hold its own cache"
    )


def make_store(
    url: str, where: str, reactor: Any, namespace: str, environ: Mapping[str, str]
) -> IStore:
    """
    The store of a C{--store} URL, not started: building one does no I/O, so
    the parent of C{--workers} can check the URL and throw the store away.
    """
    scheme = url.partition("://")[0]
    try:
        if scheme == "memory":
            return memory_store_from_url(url, reactor)
        if scheme in ("redis", "memcached"):
            # memcached tells no one of changes: a near cache there serves what
            # other processes changed up to near_ttl late, so it is asked for.
            shared_url, near_ttl, near_bytes = near_options(
                url, DEFAULT_NEAR_TTL if scheme == "redis" else 0.0
            )
            store: IStore
            if scheme == "redis":
                store = redis_store_from_url(shared_url, namespace, reactor, environ)
            else:
                store = memcached_store_from_url(shared_url, namespace, reactor)
            if near_ttl == 0:
                return store
            return NearCache(store, reactor, near_ttl, near_bytes)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    raise ConfigError(
        f"{where}: unknown store {url.partition(':')[0]!r}; use memory://, redis:// or memcached://"
    )


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


def listen(
    reactor: Any,
    description: str,
    where: str,
    factory: IProtocolFactory,
    *,
    shared: bool = False,
) -> IListeningPort:
    """
    Listen on an endpoint now, so that a bad endpoint or a port in use stops
    start-up.  A C{shared} endpoint (the public listener of C{--workers})
    must be one whose socket workers can adopt: TCP or UNIX.
    """
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:
        raise ConfigError(f"{where}: not a valid endpoint {description!r}: {e}") from None
    if shared and not shareable(endpoint):
        raise ConfigError(
            f"{where}: --workers shares only TCP and UNIX endpoints, not {description!r}"
        )
    result: list[Any] = []
    endpoint.listen(factory).addBoth(result.append)
    if not result:
        raise ConfigError(f"{where}: endpoint {description!r} does not listen at once")
    if isinstance(result[0], Failure):
        message = " ".join(str(result[0].value).split())
        raise ConfigError(f"{where}: cannot listen on {description!r}: {message}")
    port: IListeningPort = result[0]
    return port


@attrs.define(eq=False)
class Engine(MultiService):
    """
    The store, the thread pools and the refresher on them, started in that
    order.  Stopping it lets the fetches in flight finish (answering the
    requests that wait on them), then stops the pools and the store.
    """

    refresher: Refresher
    pools: ThreadPools

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        store = self.refresher.store
        if IService.providedBy(store):
            store.setServiceParent(self)
        self.pools.setServiceParent(self)
        self.refresher.setServiceParent(self)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        yield self.refresher.stopService()
        self.pools.stopService()
        store = self.refresher.store
        if IService.providedBy(store):
            yield store.stopService()


@attrs.define(eq=False)
class RefresherdService(MultiService):
    """
    The running service.  Stopping it stops listening first, then stops the
    engine (fetches in flight finish and their requests are answered), then
    closes the connections once their answers are out.

    @ivar worker: in a worker of C{--workers}, its number: it then announces
        that it serves the inherited socket rather than where it listens, and
        writes its tallied metrics to the shared directory every
        L{FLUSH_INTERVAL} seconds and once more when it has stopped.
    """

    engine: Engine
    ports: list[IListeningPort]
    sites: list[LimitedSite]
    log_output: LogOutput | None = None
    on_started: Callable[[], None] = lambda: None
    worker: int | None = None
    _log: Logger = attrs.field(factory=Logger, init=False)
    _flushing: task.LoopingCall | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        if self.log_output is not None:
            self.log_output.setServiceParent(self)
        self.engine.setServiceParent(self)

    def startService(self) -> None:
        MultiService.startService(self)
        self.on_started()
        if self.worker is not None:
            refresher = self.engine.refresher
            self._flushing = task.LoopingCall(refresher.metrics.flush)
            self._flushing.clock = refresher.clock
            self._flushing.start(FLUSH_INTERVAL, now=False)
            self._log.info(
                "refresherd: worker {worker} (pid {pid}) serving the public API on {address}",
                worker=self.worker,
                pid=os.getpid(),
                address=describe(self.ports[0]),
            )
            return
        announce(self._log, self.ports)

    def setServiceParent(self, parent: Any) -> None:
        if self.log_output is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_output.observer)
        MultiService.setServiceParent(self, parent)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        yield defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in self.ports])
        yield self.engine.stopService()
        yield defer.gatherResults([site.close_connections(CLOSE_TIMEOUT) for site in self.sites])
        if self._flushing is not None:
            if self._flushing.running:
                self._flushing.stop()
            self.engine.refresher.metrics.flush()  # the answers given while stopping
        if self.log_output is not None:
            self.log_output.stopService()


@attrs.define(eq=False)
class ParentService(MultiService):
    """
    The parent of C{--workers}: it holds the public listener for the
    workers (C{ports[0]}, never accepting on it), serves the admin listener
    if there is one (C{ports[1]}) with an engine of its own on the shared
    store, and runs the L{Supervisor}.  Stopping it closes its listeners,
    then stops the workers and waits for them (each answers the requests
    waiting on its fetches), then its engine, then closes the admin
    connections.
    """

    supervisor: Supervisor
    engine: Engine
    ports: list[IListeningPort]
    sites: list[LimitedSite]
    log_output: LogOutput | None = None
    on_started: Callable[[], None] = lambda: None
    _log: Logger = attrs.field(factory=Logger, init=False)

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        if self.log_output is not None:
            self.log_output.setServiceParent(self)
        self.engine.setServiceParent(self)
        self.supervisor.setServiceParent(self)

    def startService(self) -> None:
        MultiService.startService(self)
        self.on_started()
        announce(self._log, self.ports)
        self._log.info(
            "refresherd: {count} workers serve the public API", count=self.supervisor.count
        )

    def setServiceParent(self, parent: Any) -> None:
        if self.log_output is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_output.observer)
        MultiService.setServiceParent(self, parent)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        public, *admin = self.ports
        yield defer.gatherResults(
            [release(public), *(defer.maybeDeferred(port.stopListening) for port in admin)]
        )
        yield self.supervisor.stopService()
        yield self.engine.stopService()
        yield defer.gatherResults([site.close_connections(CLOSE_TIMEOUT) for site in self.sites])
        if self.log_output is not None:
            self.log_output.stopService()


def check_admin_listener(port: IListeningPort, settings: Settings, authorizer: Authorizer) -> None:
    """
    With no admin token configured the admin routes are open, so they may be
    served only where nobody else can connect: a loopback address or a UNIX
    socket.  C{port} is the listener that serves them.
    """
    if not authorizer.admin_open:
        return
    address: Any = port.getHost()
    if isinstance(address, UNIXAddress) or is_loopback_ip(getattr(address, "host", "")):
        return
    mounted = settings.admin_listen[0] == "none"
    where = settings.listen[1] if mounted else settings.admin_listen[1]
    what = "the public listener, which serves the admin API (--admin-listen none)"
    raise ConfigError(
        f"{where}: with no admin token configured, the admin API may listen only on "
        f"loopback (127.0.0.0/8, ::1 or a UNIX socket), not on {describe(port)}"
        + (f" ({what})" if mounted else "")
        + "; set auth.admin_tokens"
    )


def describe(port: IListeningPort) -> str:
    """C{host:port} of a TCP port, the path of a UNIX one."""
    address: Any = port.getHost()
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", address)
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


def announce(log: Logger, ports: list[IListeningPort]) -> None:
    """Log where the public API and the admin API (if on a listener of its own) listen."""
    for name, port in zip(("public API", "admin API"), ports, strict=False):
        log.info("refresherd: {name} listening on {address}", name=name, address=describe(port))


@attrs.define
class ShutdownSignals:
    """
    The first SIGTERM or SIGINT stops the service gracefully; a second one
    ends the process at once (twistd's own handler would only log
    C{ReactorNotRunning}), after calling C{at_once} (the parent of
    C{--workers} kills its workers there).
    """

    reactor: Any
    at_once: Callable[[], None] = lambda: None

    def install(self) -> None:
        """Handle the signals from now on (once the reactor runs: it installs its own)."""
        signal.signal(signal.SIGTERM, self._first)
        signal.signal(signal.SIGINT, self._first)

    def guard(self) -> None:
        """
        Handle the signals now, and again once the reactor runs and has put
        its own handlers in place: a SIGTERM that arrives between start-up and
        the reactor's first turn stops gracefully too, never by the default
        action that would kill the process.
        """
        self.install()
        # The reactor installs its sigTerm and sigInt when it starts (and would
        # make the process exit by the signal): have it install these instead.
        self.reactor.sigTerm = self._first
        self.reactor.sigInt = self._first
        self.reactor.callWhenRunning(self.install)

    def stop(self) -> None:
        """Stop gracefully, as the first signal does; a signal after this ends the process."""
        self._second_ends_all()
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _second_ends_all(self) -> None:
        signal.signal(signal.SIGTERM, self._second)
        signal.signal(signal.SIGINT, self._second)

    def _first(self, signum: int, frame: object) -> None:
        self._second_ends_all()
        self.reactor.callFromThread(self._stop_reactor)

    def _second(self, signum: int, frame: object) -> None:
        try:
            self.at_once()
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def handle_shutdown_signals(
    reactor: Any, at_once: Callable[[], None] = lambda: None
) -> ShutdownSignals:
    """Install L{ShutdownSignals} now and return them."""
    signals = ShutdownSignals(reactor, at_once)
    signals.install()
    return signals


def log_output(settings: Settings, reactor: Any) -> LogOutput | None:
    """
    Where the process logs: C{--log-format json}; in a worker, text with the
    worker's number; with access logging on, twistd's text with cheap
    flushes (L{LogOutput}).  None: twistd's own text observer.
    """
    worker = settings.worker
    file = LazyFlushFile(sys.stdout)
    writer: Callable[[dict[str, Any]], None]
    if settings.log_format == "json":
        json_observer = JSONLinesObserver(file)  # type: ignore[arg-type]
        writer = json_observer if worker is None else WorkerLogObserver(worker.id, json_observer)
    elif worker is not None:
        writer = worker_text_observer(worker.id, file)  # type: ignore[arg-type]
    elif settings.config.server.access_log:
        writer = text_observer(file)
    else:
        return None
    return LogOutput(file, writer, reactor)


def build_engine(
    settings: Settings,
    reactor: Any,
    environ: Mapping[str, str],
    multiprocess_dir: str | None = None,
) -> Engine:
    """The store, the jobs and the refresher on them, with their thread pools and metrics."""
    config = settings.config
    url, where = settings.store
    store = make_store(url, where, reactor, config.store.namespace, environ)
    pools = ThreadPools()
    client = make_http_client(reactor)
    jobs = {
        name: Job(job, make_fetcher(job, config.source, reactor, pools, client))
        for name, job in config.jobs.items()
    }
    metrics = metrics_for(jobs, multiprocess_dir)
    refresher = Refresher(store, jobs, reactor, config.store.namespace, metrics)
    return Engine(refresher, pools)


def build(options: Mapping[str, Any], reactor: Any, environ: Mapping[str, str]) -> IService:
    """
    The service twistd runs: a single process, the parent of C{--workers},
    or one of its workers.
    """
    settings = settings_from(options, environ)
    if settings.worker is None:
        require_shared_store(settings, environ)
        if settings.workers > 1:
            return build_parent(options, settings, reactor, environ)
    return build_service(settings, reactor, environ)


def build_service(
    settings: Settings, reactor: Any, environ: Mapping[str, str]
) -> RefresherdService:
    """A process that serves the API: on its own, or as one of the workers."""
    config = settings.config
    worker = settings.worker
    engine = build_engine(
        settings, reactor, environ, environ.get(MULTIPROCESS_DIR) if worker is not None else None
    )
    refresher, metrics = engine.refresher, engine.refresher.metrics
    authorizer = Authorizer.from_config(config.auth)
    admin = AdminAPI(refresher, authorizer, metrics, reactor, config.server.access_log)
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
    signals = ShutdownSignals(reactor)
    if worker is not None:
        # The parent listens, serves the admin API and checked both endpoints.
        lifeline = connect_lifeline(reactor, worker.lifeline, signals.stop)
        port = adopt(reactor, worker.fd, worker.family, public_site)
        return RefresherdService(
            engine,
            [port],
            [public_site],
            log_output=log_output(settings, reactor),
            on_started=lambda: start_worker(signals, lifeline),
            worker=worker.id,
        )
    sites = [public_site]
    ports = [listen(reactor, settings.listen[0], settings.listen[1], public_site)]
    if not mounted:
        admin_site = LimitedSite(
            admin.resource(), lambda method, path: config.server.max_body_bytes, reactor
        )
        sites.append(admin_site)
    try:
        if not mounted:
            ports.append(listen(reactor, admin_listen, admin_where, admin_site))
        check_admin_listener(ports[-1], settings, authorizer)
    except ConfigError:
        for port in ports:
            port.stopListening()
        raise
    return RefresherdService(
        engine,
        ports,
        sites,
        log_output=log_output(settings, reactor),
        on_started=signals.guard,
    )


def start_worker(signals: ShutdownSignals, lifeline: Lifeline) -> None:
    """A worker handles the signals, and tells its parent it is ready."""
    signals.guard()
    lifeline.ready()


def build_parent(
    options: Mapping[str, Any], settings: Settings, reactor: Any, environ: Mapping[str, str]
) -> ParentService:
    """
    The parent of C{--workers}.  It builds what every worker will build, so
    that a mistake is one line at start-up here rather than workers that fail
    one after the other, and keeps it for the admin API it serves.
    """
    config = settings.config
    engine = build_engine(settings, reactor, environ)
    metrics = engine.refresher.metrics
    authorizer = Authorizer.from_config(config.auth)
    admin = AdminAPI(engine.refresher, authorizer, metrics, reactor, config.server.access_log)
    admin_listen, admin_where = settings.admin_listen
    public = listen(reactor, settings.listen[0], settings.listen[1], HeldForWorkers(), shared=True)
    shared = hold(public)
    ports = [public]
    sites = []
    try:
        if admin_listen != "none":
            admin_site = LimitedSite(
                admin.resource(), lambda method, path: config.server.max_body_bytes, reactor
            )
            sites.append(admin_site)
            ports.append(listen(reactor, admin_listen, admin_where, admin_site))
        check_admin_listener(ports[-1], settings, authorizer)
    except ConfigError:
        release(public)
        for port in ports[1:]:
            port.stopListening()
        raise
    plugin_options = worker_plugin_options(options, settings)
    reactor_name = twistd_reactor(options)
    supervisor = Supervisor(
        reactor,
        settings.workers,
        shared,
        lambda n: worker_arguments(n, shared.family, plugin_options, reactor_name),
        environ,
        metrics,
        stop_timeout=DRAIN_TIMEOUT + CLOSE_TIMEOUT + 15,
    )
    signals = ShutdownSignals(reactor, at_once=supervisor.kill)
    return ParentService(
        supervisor,
        engine,
        ports,
        sites,
        log_output=log_output(settings, reactor),
        on_started=signals.guard,
    )


PASSED_TO_WORKERS = ("listen", "admin-listen", "store", "log-format")
"""The plugin options a worker gets as they were given to the parent (C{--config} made absolute)."""


def worker_plugin_options(options: Mapping[str, Any], settings: Settings) -> list[str]:
    """
    The parent's plugin options for its workers, so that a worker reads the
    same configuration file with the same overrides (and, for C{--config}
    not given, the file the parent read, or none).
    """
    given = [f"--{name}={options[name]}" for name in PASSED_TO_WORKERS if options.get(name)]
    config = options.get("config")
    if config is None and settings.config.source != "<defaults>":
        config = settings.config.source
    if config is not None:
        given.insert(0, f"--config={os.path.abspath(config)}")
    return given


def twistd_reactor(options: Mapping[str, Any]) -> str | None:
    """The reactor given to twistd (C{--reactor}), for the workers to run the same."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    name = parent.get("reactor")
    return str(name) if name else None


def makeService(options: Mapping[str, Any]) -> IService:
    """twistd's entry point: the service, or one line and exit status 1."""
    from twisted.internet import reactor

    try:
        return build(options, reactor, os.environ)
    except ConfigError as e:
        raise SystemExit(f"refresherd: {e}") from None
