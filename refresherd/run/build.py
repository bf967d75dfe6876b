"""
The service twistd runs, built from the settings: a single process, the
parent of C{--workers}, or one of its workers.  Everything that can be wrong
(the configuration, an option, an endpoint, a port in use) is found here and
raised as one L{ConfigError}.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.python.failure import Failure

from refresherd import __version__
from refresherd.config import DEFAULT_PATH, ServerConfig, read_bytes
from refresherd.core.flights import ABORT_TIMEOUT
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.refresher import DRAIN_TIMEOUT
from refresherd.errors import ConfigError
from refresherd.http.admin import AdminAPI
from refresherd.http.auth import Authorizer, is_loopback_ip
from refresherd.http.public import PublicAPI
from refresherd.http.site import LimitedSite
from refresherd.http.wire import WireSite
from refresherd.logs import (
    AccessLog,
    JSONLinesObserver,
    LazyFlushFile,
    LogOutput,
    log_file,
    text_observer,
)
from refresherd.metrics import MULTIPROCESS_DIR
from refresherd.run.reload import Changes, Reloader, apply_to_engine, prepare_engine
from refresherd.run.services import (
    CLOSE_TIMEOUT,
    Engine,
    ParentService,
    RefresherdService,
    describe,
)
from refresherd.run.settings import Settings, require_shared_store, settings_from
from refresherd.run.signals import ShutdownSignals
from refresherd.run.wiring import (
    build_engine,
    describe_store,
    make_store,
    max_entry_bytes,
    outage_bytes,
    store_kind,
)
from refresherd.run.workers.hot import HotKeysView
from refresherd.run.workers.lifeline import Lifeline, connect_lifeline
from refresherd.run.workers.logs import WorkerLogObserver, worker_text_observer
from refresherd.run.workers.options import worker_arguments
from refresherd.run.workers.recent import RecentView
from refresherd.run.workers.sockets import HeldForWorkers, adopt, hold, release, shareable
from refresherd.run.workers.supervisor import RolloutFailed, Supervisor


def build(options: Mapping[str, Any], reactor: Any, environ: Mapping[str, str]) -> IService:
    """
    The service twistd runs: a single process, the parent of C{--workers},
    or one of its workers.
    """
    settings = settings_from(options, environ)
    if settings.worker is None:
        require_shared_store(settings)
        if settings.workers > 1:
            return build_parent(options, settings, reactor, environ)
    return build_service(settings, reactor, environ, lambda: settings_from(options, environ))


def engine_for(
    settings: Settings,
    reactor: Any,
    environ: Mapping[str, str],
    multiprocess_dir: str | None = None,
    warm: bool = True,
) -> Engine:
    """
    The engine of C{settings}: their store, jobs and refresher, and with
    C{warm} their warm lists kept ready (not in a worker: its parent does).
    """
    config = settings.config
    store = make_store(
        settings.store.value,
        settings.store.where,
        reactor,
        config.store.namespace,
        environ,
        max_entry_bytes(config.jobs),
    )
    return build_engine(
        config.jobs,
        config.source,
        store,
        config.store.namespace,
        reactor,
        multiprocess_dir,
        outage_bytes(settings.store.value),
        HotKeysRegistry(config.server.hot_keys, config.server.hot_half_life),
        warm=warm,
    )


def summary(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    """
    The lines a process logs at start, before where it listens: the version,
    the configuration file, the jobs and the store; a warning when there are
    no jobs.
    """
    config = settings.config
    names = sorted(config.jobs)
    source = config.source
    if source == "<defaults>":
        source = "no configuration file (no --config, no ./refresherd.toml)"
    lines = [
        (
            "refresherd {version}: {count} job(s) from {source} ({jobs}); store {store}",
            {
                "version": __version__,
                "count": len(names),
                "source": source,
                "jobs": ", ".join(names) or "none",
                "store": describe_store(settings.store.value),
            },
        )
    ]
    if not names:
        lines.append(
            (
                "!refresherd: no jobs are configured: every value request will answer "
                "unknown_job; give --config or put a refresherd.toml in the working directory",
                {},
            )
        )
    return lines


def build_service(
    settings: Settings,
    reactor: Any,
    environ: Mapping[str, str],
    read: Callable[[], Settings] | None = None,
) -> RefresherdService:
    """
    A process that serves the API: on its own, or as one of the workers.
    C{read}: the settings read again, as start-up reads them (a reload).
    """
    config = settings.config
    worker = settings.worker
    engine = engine_for(
        settings,
        reactor,
        environ,
        environ.get(MULTIPROCESS_DIR) if worker is not None else None,
        warm=worker is None,
    )
    refresher, metrics = engine.refresher, engine.refresher.metrics
    multiprocess_dir = environ.get(MULTIPROCESS_DIR) if worker is not None else None
    hot = HotKeysView(engine.hot, lambda: multiprocess_dir, None if worker is None else worker.id)
    metrics.hot_keys = hot.sizes
    recent = RecentView(
        metrics.tallies,
        reactor.seconds,
        lambda: multiprocess_dir,
        None if worker is None else worker.id,
    )
    authorizer = Authorizer.from_config(config.auth)
    admin_port: list[IListeningPort] = []  # the listener that serves the admin API, once open
    reloader = Reloader(
        settings,
        read or (lambda: settings),
        apply_to_engine(
            engine,
            authorizer,
            lambda new, tokens: check_admin_listener(admin_port[0], new, tokens),
            reactor,
        ),
        metrics,
    )
    admin = AdminAPI(
        refresher,
        authorizer,
        metrics,
        reactor,
        config.server.access_log,
        hot_keys=hot.current,
        store_kind=store_kind(settings.store.value),
        tallies=recent.current,
        started=parent_started(environ) if worker is not None else None,
        # A worker's admin routes (--admin-listen none) do not reload: its parent does.
        reload=reloader.reload if worker is None else None,
    )
    public = PublicAPI(
        refresher,
        authorizer,
        config.server,
        metrics,
        reactor,
        fallback=admin.resource() if settings.admin_mounted else None,
        store_kind=store_kind(settings.store.value),
    )
    public_site = WireSite(
        public.resource(),
        public.body_limit,
        reactor,
        check_head=authorizer.check_head,
        **connection_limits(config.server),
    )
    public_site.quick = public.quick()
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
            hot_keys=hot,
            recent=recent,
        )
    ports = [listen(reactor, settings.listen.value, settings.listen.where, public_site)]
    sites: list[LimitedSite] = [public_site]
    try:
        ports += admin_listener(settings, admin, authorizer, reactor, sites, ports[0])
    except ConfigError:
        for port in ports:
            port.stopListening()
        raise
    admin_port.append(ports[-1])  # its own, or the public one (--admin-listen none)
    signals.reload = lambda: reloader.reload().addErrback(lambda _: None)  # logged
    return RefresherdService(
        engine,
        ports,
        sites,
        log_output=log_output(settings, reactor),
        on_started=signals.guard,
        summary=summary(settings),
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
    engine = engine_for(settings, reactor, environ)
    metrics = engine.refresher.metrics
    authorizer = Authorizer.from_config(config.auth)
    validated: list[bytes | None] = [None]  # the contents of the file the last reload read
    admin_port: list[IListeningPort] = []

    def read_again() -> Settings:
        try:
            validated[0] = read_bytes(options.get("config") or DEFAULT_PATH)
        except OSError:
            validated[0] = None  # and settings_from says what is wrong, as start-up does
        return settings_from(options, environ, validated[0])

    prepare = prepare_engine(
        engine,
        authorizer,
        lambda new, tokens: check_admin_listener(admin_port[0], new, tokens),
        reactor,
    )

    def roll_out(old: Settings, new: Settings, changes: Changes) -> Deferred[None]:
        """Check, replace the workers one at a time on what was read, then change the parent."""
        change = prepare(new, changes)
        contents = validated[0]
        handed = None if contents is None else supervisor.keep_config(contents)
        rolled = supervisor.replace(
            lambda n: worker_arguments(n, shared.family, plugin_options, reactor_name, handed)
        )

        def failed(failure: Failure) -> None:
            failure.trap(RolloutFailed)
            raise ConfigError(str(failure.value))

        return rolled.addCallbacks(lambda _: change(), failed)

    reloader = Reloader(settings, read_again, roll_out, metrics)
    # The parent serves no public request: what it shows is the workers' (the
    # directory the supervisor makes for them when it starts).
    hot = HotKeysView(engine.hot, lambda: supervisor.metrics_dir)
    metrics.hot_keys = hot.sizes
    recent = RecentView(metrics.tallies, reactor.seconds, lambda: supervisor.metrics_dir)
    admin = AdminAPI(
        engine.refresher,
        authorizer,
        metrics,
        reactor,
        config.server.access_log,
        hot_keys=hot.current,
        store_kind=store_kind(settings.store.value),
        tallies=recent.current,
        reload=reloader.reload,
    )
    # The workers' GET /v1/status (--admin-listen none) shows when the parent started.
    environ = {**environ, STARTED: repr(metrics.recent.started)}
    public = listen(
        reactor, settings.listen.value, settings.listen.where, HeldForWorkers(), shared=True
    )
    shared = hold(public)
    ports = [public]
    sites: list[LimitedSite] = []
    try:
        ports += admin_listener(settings, admin, authorizer, reactor, sites, public)
    except ConfigError:
        release(public)
        raise
    admin_port.append(ports[-1])
    plugin_options = worker_plugin_options(options, settings)
    reactor_name = twistd_reactor(options)
    output = log_output(settings, reactor)
    supervisor = Supervisor(
        reactor,
        settings.workers,
        shared,
        lambda n: worker_arguments(n, shared.family, plugin_options, reactor_name),
        environ,
        metrics,
        stop_timeout=DRAIN_TIMEOUT + ABORT_TIMEOUT + CLOSE_TIMEOUT + 10,
        # With --logfile, the workers' lines go there too, through the parent.
        output=output.relay if output is not None and settings.log_file is not None else None,
    )
    signals = ShutdownSignals(
        reactor,
        at_once=supervisor.kill,
        reload=lambda: reloader.reload().addErrback(lambda _: None),  # logged
    )
    return ParentService(
        engine,
        ports,
        sites,
        log_output=output,
        on_started=signals.guard,
        summary=summary(settings),
        supervisor=supervisor,
    )


STARTED = "REFRESHERD_STARTED"
"""The environment variable that tells a worker when its parent started (unix seconds)."""


def parent_started(environ: Mapping[str, str]) -> float | None:
    """When the parent of this worker started, as it told it (None: not told, or not a time)."""
    try:
        started = float(environ.get(STARTED, ""))
    except ValueError:
        return None
    return started if math.isfinite(started) and started > 0 else None


def admin_listener(
    settings: Settings,
    admin: AdminAPI,
    authorizer: Authorizer,
    reactor: Any,
    sites: list[LimitedSite],
    public: IListeningPort,
) -> list[IListeningPort]:
    """
    The admin API's own listener (none with C{--admin-listen none}, where the
    public listener serves it), its site added to C{sites}, once it is known
    that the listener serving the admin API may: L{check_admin_listener}.
    C{public}: the public listener, which serves the admin API when it is mounted.
    """
    if settings.admin_mounted:
        port = public
        ports: list[IListeningPort] = []
    else:
        server = settings.config.server
        max_body = server.max_body_bytes
        site = LimitedSite(
            admin.resource(),
            lambda method, path: max_body,
            reactor,
            **connection_limits(server),
        )
        sites.append(site)
        port = listen(reactor, settings.admin_listen.value, settings.admin_listen.where, site)
        ports = [port]
    try:
        check_admin_listener(port, settings, authorizer)
    except ConfigError:
        for opened in ports:
            opened.stopListening()
        raise
    return ports


def connection_limits(server: ServerConfig) -> dict[str, Any]:
    """The bounds of each listener's connections (C{[server]}), as L{LimitedSite} takes them."""
    return {
        "max_connections": server.max_connections,
        "max_connections_per_address": server.max_connections_per_address,
        "head_timeout": server.head_timeout,
    }


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
    mounted = settings.admin_mounted
    where = settings.listen.where if mounted else settings.admin_listen.where
    what = "the public listener, which serves the admin API (--admin-listen none)"
    raise ConfigError(
        f"{where}: with no admin token configured, the admin API may listen only on "
        f"loopback (127.0.0.0/8, ::1 or a UNIX socket), not on {describe(port)}"
        + (f" ({what})" if mounted else "")
        + "; set auth.admin_tokens"
    )


def log_output(settings: Settings, reactor: Any) -> LogOutput | None:
    """
    Where the process logs: C{--log-format json}; in a worker, text with the
    worker's number; with access logging on, twistd's text with cheap
    flushes (L{LogOutput}).  None: twistd's own text observer.
    """
    worker = settings.worker
    file = LazyFlushFile(sys.stdout if worker is not None else log_file(settings.log_file))
    writer: Callable[[dict[str, Any]], None]
    if settings.log_format == "json":
        json_observer = JSONLinesObserver(file)  # type: ignore[arg-type]
        writer = json_observer if worker is None else WorkerLogObserver(worker.id, json_observer)
    elif worker is not None:
        writer = worker_text_observer(worker.id, file)  # type: ignore[arg-type]
    elif settings.config.server.access_log or (settings.workers > 1 and settings.log_file):
        writer = text_observer(file)  # (a parent of workers: the file their lines go to)
    else:
        return None
    access = None
    if settings.config.server.access_log:
        access = AccessLog(
            file, json=settings.log_format == "json", worker=None if worker is None else worker.id
        )
    return LogOutput(file, writer, reactor, access)


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
