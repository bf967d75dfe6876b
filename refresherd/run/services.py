"""
The running services: the engine (store, thread pools, refresher), a process
that serves the API (alone or as a worker), and the parent of C{--workers}.
Each stops in the order that answers every request it took.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger
from twisted.python.threadpool import ThreadPool

from refresherd.config import JobConfig
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.core.warmer import Warmer
from refresherd.http.site import LimitedSite
from refresherd.logs import LogOutput
from refresherd.metrics import FLUSH_INTERVAL
from refresherd.run.workers.hot import HotKeysView
from refresherd.run.workers.recent import RecentView
from refresherd.run.workers.sockets import release
from refresherd.run.workers.supervisor import Supervisor

CLOSE_TIMEOUT = 5.0
"""Seconds that answers given during shutdown have to reach their clients."""


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

    def add(self, pool: ThreadPool) -> None:
        """A new job's pool (a reload), started at once if the service runs."""
        self.pools.append(pool)
        if self.running:
            pool.start()

    def retire(self, pool: ThreadPool, clock: Any) -> None:
        """
        A pool whose job a reload removed or replaced: stopped once the fetches
        it runs are over (checked every second), never blocking the reactor.
        """
        if pool not in self.pools:
            return
        if pool.working or pool.q.qsize():
            clock.callLater(1.0, self.retire, pool, clock)
            return
        self.pools.remove(pool)
        if pool.started:
            pool.stop()

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


@attrs.define(eq=False)
class Engine(MultiService):
    """
    The store, the thread pools, the refresher on them and the warmer (warm
    lists, if any), started in that order.  Stopping it stops the warmer's
    timers, lets the fetches in flight finish (answering the requests that
    wait on them), then stops the pools and the store.

    @ivar hot: this process's hot keys (C{[server] hot_keys}), which the
        admin API shows (C{GET /v1/hot}) and its lookups observe.
    """

    refresher: Refresher
    pools: ThreadPools
    hot: HotKeysRegistry = attrs.field(factory=HotKeysRegistry)
    warmer: Warmer | None = None
    make_job: Callable[[JobConfig, ThreadPools], Job] | None = attrs.field(
        default=None, kw_only=True
    )
    """Builds a job as start-up did (a reload's new and changed jobs), its pool in the one given."""
    warms: bool = attrs.field(default=False, kw_only=True)
    """Whether this engine keeps the warm lists ready (not a worker's)."""

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        store = self.refresher.store
        if IService.providedBy(store):
            store.setServiceParent(self)
        self.pools.setServiceParent(self)
        self.refresher.setServiceParent(self)
        if self.warmer is not None:
            self.warmer.setServiceParent(self)

    def stop_background(self) -> None:
        """Start no more warming nor refresh-ahead (those running finish with the drain)."""
        if self.warmer is not None and self.warmer.running:
            self.warmer.stopService()
        if self.refresher.ahead is not None:
            self.refresher.ahead.stop()

    @defer.inlineCallbacks
    def stopService(self, drain: float | None = None) -> Any:
        """Stopped, the fetches in flight let finish for up to C{drain} seconds (else the
        refresher's C{drain_timeout})."""
        Service.stopService(self)
        self.stop_background()
        yield self.refresher.stopService(drain)
        self.pools.stopService()
        store = self.refresher.store
        if IService.providedBy(store):
            yield store.stopService()


def describe(port: IListeningPort) -> str:
    """C{host:port} of a TCP port, the path of a UNIX one."""
    address: Any = port.getHost()
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", address)
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


@attrs.define(eq=False)
class _Process(MultiService):
    """
    What a single process and the parent of C{--workers} share: the log
    output they install in twistd's application, the lines they log at
    start, and the listeners and sites they close when they stop.
    """

    engine: Engine
    ports: list[IListeningPort]
    sites: list[LimitedSite]
    log_output: LogOutput | None = None
    on_started: Callable[[], None] = lambda: None
    summary: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    """What to log at start: (format, fields), one line each; a format starting
    with C{!} is a warning."""
    _log: Logger = attrs.field(factory=Logger, init=False)

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)
        if self.log_output is not None:
            self.log_output.setServiceParent(self)
        self.engine.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if self.log_output is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_output.observer)
        MultiService.setServiceParent(self, parent)

    def startService(self) -> None:
        MultiService.startService(self)
        self.on_started()
        for text, fields in self.summary:
            if text.startswith("!"):
                self._log.warn(text[1:], **fields)
            else:
                self._log.info(text, **fields)

    def announce(self) -> None:
        """Log where the public API and the admin API (if on a listener of its own) listen."""
        for name, port in zip(("public API", "admin API"), self.ports, strict=False):
            self._log.info(
                "refresherd: {name} listening on {address}", name=name, address=describe(port)
            )

    def _wind_down(self) -> None:
        """Connections are closed once idle: their clients go elsewhere meanwhile."""
        for site in self.sites:
            site.wind_down()

    @defer.inlineCallbacks
    def _answer_then_stop_engine(self) -> Any:
        """
        Once wound down: the requests under way answered (each connection then
        closes), then the engine stopped, within one drain timeout for both;
        a request whose lookup was in the store when the stop began may still
        start a fetch, which the engine then lets finish.
        """
        refresher = self.engine.refresher
        started = refresher.clock.seconds()
        self.engine.stop_background()
        yield defer.gatherResults(
            [site.until_answered(refresher.drain_timeout) for site in self.sites]
        )
        left = refresher.drain_timeout - (refresher.clock.seconds() - started)
        yield self.engine.stopService(drain=max(0.0, left))

    def _close_connections(self) -> Any:
        """Close the connections once their answers are out (or after L{CLOSE_TIMEOUT})."""
        return defer.gatherResults([site.close_connections(CLOSE_TIMEOUT) for site in self.sites])

    def _stop_logging(self) -> None:
        if self.log_output is not None:
            self.log_output.stopService()


@attrs.define(eq=False)
class RefresherdService(_Process):
    """
    A process that serves the API.  Stopping it stops listening first, then
    lets the requests under way be answered (each connection closes after its
    answer) and the fetches in flight finish, then stops the engine, then
    closes the connections left once their answers are out.

    @ivar worker: in a worker of C{--workers}, its number: it then announces
        that it serves the inherited socket rather than where it listens, and
        writes its tallied metrics and its hot keys to the shared directory
        every L{FLUSH_INTERVAL} seconds and once more when it has stopped.
    """

    worker: int | None = None
    hot_keys: HotKeysView | None = None
    """In a worker, its hot keys, written with its metrics (L{HotKeysView.write})."""
    recent: RecentView | None = None
    """In a worker, what its jobs did lately, written with its metrics (L{RecentView.write})."""
    _flushing: task.LoopingCall | None = attrs.field(default=None, init=False)

    def startService(self) -> None:
        super().startService()
        if self.worker is None:
            self.announce()
            return
        refresher = self.engine.refresher
        self._flushing = task.LoopingCall(self._flush)
        self._flushing.clock = refresher.clock
        self._flushing.start(FLUSH_INTERVAL, now=False)
        self._log.info(
            "refresherd: worker {worker} (pid {pid}) serving the public API on {address}",
            worker=self.worker,
            pid=os.getpid(),
            address=describe(self.ports[0]),
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        yield defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in self.ports])
        self._wind_down()
        yield self._answer_then_stop_engine()
        yield self._close_connections()
        if self._flushing is not None:
            if self._flushing.running:
                self._flushing.stop()
            self._flush()  # the answers given while stopping
        self._stop_logging()

    def _flush(self) -> None:
        """A worker's tallied metrics, hot keys and status, to the shared directory."""
        try:
            self.engine.refresher.metrics.flush()
        except Exception:
            self._log.failure("refresherd: cannot write the metrics")
        if self.hot_keys is not None:
            self.hot_keys.write()
        if self.recent is not None:
            self.recent.write()


@attrs.define(eq=False)
class ParentService(_Process):
    """
    The parent of C{--workers}: it holds the public listener for the
    workers (C{ports[0]}, never accepting on it), serves the admin listener
    if there is one (C{ports[1]}) with an engine of its own on the shared
    store, and runs the L{Supervisor}.  Stopping it closes its listeners,
    then stops the workers and waits for them (each answers the requests
    waiting on its fetches), then its engine, then closes the admin
    connections.
    """

    supervisor: Supervisor = attrs.field(kw_only=True)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.supervisor.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.announce()
        self._log.info(
            "refresherd: {count} workers serve the public API", count=self.supervisor.count
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        public, *admin = self.ports
        yield defer.gatherResults(
            [release(public), *(defer.maybeDeferred(port.stopListening) for port in admin)]
        )
        self._wind_down()
        yield self.supervisor.stopService()
        yield self._answer_then_stop_engine()
        yield self._close_connections()
        self._stop_logging()
