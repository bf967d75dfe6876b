"""
C{--workers N}: N processes serving the public API on one listening socket.

A process cannot fork once its reactor runs, so the workers are fresh
interpreters, and the socket is handed down to them:

- The parent (the process twistd started) binds the public listener in
  C{makeService}, as a single process does, so that a port in use is still a
  one-line start-up error; it never accepts on it (L{hold}).  It serves the
  admin listener itself, where C{/metrics} sums the metrics of every worker.
- L{Supervisor} starts each worker with C{reactor.spawnProcess}: the same
  interpreter running C{twistd -n --pidfile= refresherd} with the parent's
  options, the listening socket as file descriptor L{PUBLIC_FD}, one end of
  a socket pair as its lifeline on L{LIFELINE_FD}, the parent's standard
  output and error, and C{PROMETHEUS_MULTIPROC_DIR} naming a directory of
  the parent's where the worker writes its metrics.
- A worker adopts the socket (L{adopt}) and serves the public API on it with
  a refresher and a store connection of its own.  It says C{ready} on its
  lifeline once it runs; it stops, as on SIGTERM, when the lifeline closes:
  when the parent stops, and when the parent dies, even by SIGKILL.
- The parent restarts a worker that exits while the service runs, after a
  delay that doubles (up to L{MAX_RESTART_DELAY}) while it keeps exiting
  soon after it started.  When the parent stops, it closes its copy of the
  socket, closes every lifeline, and waits for the workers to finish what
  they are doing (then kills those that take longer than its stop timeout).

Only TCP and UNIX endpoints can be shared this way (L{shareable}).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import attrs
from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import Service
from twisted.internet import defer, tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IProtocolFactory,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    formatEventAsClassicLogText,
)
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from refresherd.errors import ConfigError
from refresherd.metrics import MULTIPROCESS_DIR, Metrics

PUBLIC_FD = 3
"""The file descriptor of the public listening socket in a worker."""
LIFELINE_FD = 4
"""The file descriptor of a worker's end of its lifeline."""

FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
"""The address families of the sockets a worker can adopt, by the name its option uses."""

READY = b"ready"
"""What a worker says on its lifeline once it serves."""

RESTART_DELAY = 0.2
"""Seconds before a worker that exited is started again, the first time."""
MAX_RESTART_DELAY = 30.0
"""The longest delay between restarts of a worker that keeps exiting."""
STABLE_AFTER = 10.0
"""A worker that exits after serving this long is restarted after L{RESTART_DELAY} again."""
STOP_TIMEOUT = 30.0
"""Seconds that workers have to stop before the parent kills them."""

TWISTD = "from twisted.scripts.twistd import run; run()"
"""The program a worker's interpreter runs (C{-c}): twistd, as the parent was started."""


# -- the socket --------------------------------------------------------------


def shareable(endpoint: object) -> bool:
    """Whether workers can share the sockets of C{endpoint}: TCP and UNIX endpoints only."""
    return isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint | UNIXServerEndpoint)


@attrs.frozen
class SharedSocket:
    """A listening socket of the parent, for its workers to adopt."""

    fd: int
    family: str
    """A key of L{FAMILIES}."""


def family_of(address: IAddress) -> str:
    """The name (in L{FAMILIES}) of the address family of a listening port's address."""
    if isinstance(address, IPv4Address):
        return "inet"
    if isinstance(address, IPv6Address):
        return "inet6"
    if isinstance(address, UNIXAddress):
        return "unix"
    raise ValueError(f"cannot share a socket listening on {address!r}")


class HeldForWorkers(Factory):
    """The factory of the parent's copy of the public listener, on which it never accepts."""

    noisy = False


def hold(port: IListeningPort) -> SharedSocket:
    """
    Keep the listening socket of C{port} for the workers: the parent never
    accepts a connection on it.
    """
    listening: Any = port
    listening.stopReading()
    return SharedSocket(listening.fileno(), family_of(port.getHost()))


def release(port: IListeningPort) -> Deferred[None]:
    """
    Close the parent's copy of a socket held for the workers, without
    shutting the socket down: a shutdown would stop the workers' copies too,
    which still answer what they accepted.  (A UNIX socket's file goes: the
    parent made it.)
    """
    listening: Any = port
    listening._shouldShutdown = False
    stopped: Deferred[None] = defer.maybeDeferred(listening.stopListening)
    return stopped


class InheritedUNIXPort(unix.Port):
    """
    A UNIX port on a listening socket inherited from the parent.

    Twisted's own adopted UNIX port would listen again (with its default
    backlog), make the file world-writable, shut the socket down when it
    stops (for every worker at once) and delete the file; the parent owns
    the file and set all of that up.
    """

    def __init__(self, fd: int, factory: IProtocolFactory, reactor: Any) -> None:
        self._inherited = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
        super().__init__(self._inherited.getsockname(), factory, reactor=reactor)

    def startListening(self) -> None:
        factory: Any = self.factory
        factory.doStart()
        self.connected = True
        self.socket = self._inherited
        self.fileno = self.socket.fileno  # type: ignore[method-assign]
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        self._shouldShutdown = False
        tcp.Port.connectionLost(self, reason)


def adopt(reactor: Any, fd: int, family: str, factory: IProtocolFactory) -> IListeningPort:
    """
    Accept connections on the listening socket inherited as C{fd} (then
    closed: the port has its own copy).  A worker stopping closes its copy
    only, never the socket the others share.
    """
    try:
        port: IListeningPort
        if family == "unix":
            unix_port = InheritedUNIXPort(fd, factory, reactor)
            unix_port.startListening()
            port = unix_port
        else:
            port = reactor.adoptStreamPort(fd, FAMILIES[family], factory)
    except OSError as e:
        raise ConfigError(
            f"--worker-fd: cannot adopt file descriptor {fd}: {e.strerror or e}"
        ) from None
    os.close(fd)
    return port


# -- what a worker is told ---------------------------------------------------


@attrs.frozen
class WorkerOptions:
    """The internal options that make a process one of the workers."""

    id: int
    fd: int
    family: str
    lifeline: int


WORKER_OPTIONS = ("worker-id", "worker-fd", "worker-family", "worker-lifeline")


def worker_options(options: Mapping[str, Any]) -> WorkerOptions | None:
    """
    The worker options given, or L{None} for a process that is not a worker.
    They are internal (L{Supervisor} passes them); any mistake is a
    L{ConfigError}.
    """
    given = {name: options.get(name) for name in WORKER_OPTIONS}
    if all(value is None for value in given.values()):
        return None
    numbers: dict[str, int] = {}
    for name in ("worker-id", "worker-fd", "worker-lifeline"):
        text = given[name]
        if text is None or not str(text).isdigit():
            raise ConfigError(
                f"--{name}: internal option of --workers, needs a whole number, not {text!r}"
            )
        numbers[name] = int(text)
    family = given["worker-family"]
    if family not in FAMILIES:
        raise ConfigError(
            f"--worker-family: internal option of --workers, one of {', '.join(FAMILIES)}, "
            f"not {family!r}"
        )
    return WorkerOptions(
        numbers["worker-id"], numbers["worker-fd"], str(family), numbers["worker-lifeline"]
    )


def worker_arguments(
    worker: int, family: str, plugin_options: list[str], reactor_name: str | None
) -> list[str]:
    """
    The command line of a worker after the interpreter: twistd with the
    parent's reactor, in the foreground and with no pid file, then the
    plugin with the parent's own options (C{plugin_options}) and the
    internal ones.
    """
    twistd = ["-P", "-c", TWISTD, "-n", "--pidfile="]
    if reactor_name is not None:
        twistd.append(f"--reactor={reactor_name}")
    return [
        *twistd,
        "refresherd",
        *plugin_options,
        f"--worker-id={worker}",
        f"--worker-fd={PUBLIC_FD}",
        f"--worker-family={family}",
        f"--worker-lifeline={LIFELINE_FD}",
    ]


# -- the lifeline ------------------------------------------------------------


class _One(Factory):
    """A factory for one connection, whose protocol is already made."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


class Lifeline(Protocol):
    """
    A worker's end of its lifeline.  It tells the parent when the worker is
    ready; the parent closing it (or dying) calls C{on_lost}.
    """

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost

    def ready(self) -> None:
        """Tell the parent that this worker serves."""
        if self.transport is not None:
            self.transport.write(READY + b"\r\n")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._on_lost()


def connect_lifeline(reactor: Any, fd: int, on_lost: Callable[[], None]) -> Lifeline:
    """The lifeline inherited as C{fd} (then closed: the connection has its own copy)."""
    lifeline = Lifeline(on_lost)
    try:
        reactor.adoptStreamConnection(fd, socket.AF_UNIX, _One(lifeline))
    except OSError as e:
        raise ConfigError(
            f"--worker-lifeline: cannot adopt file descriptor {fd}: {e.strerror or e}"
        ) from None
    os.close(fd)
    return lifeline


# -- worker logs -------------------------------------------------------------


@implementer(ILogObserver)
@attrs.define
class WorkerLogObserver:
    """
    Adds the worker's number to every event (the C{worker} field) before
    C{observer} writes it.
    """

    worker: int
    observer: Callable[[LogEvent], None]

    def __call__(self, event: LogEvent) -> None:
        self.observer({**event, "worker": self.worker})


def worker_text_observer(worker: int, out: IO[str] | None = None) -> ILogObserver:
    """
    twistd's text format with the worker named in the system field:
    C{2026-01-01T00:00:00+0000 [worker 1 refresherd.tap#info] message}.
    """

    def format_event(event: LogEvent) -> str | None:
        level = getattr(event.get("log_level"), "name", "-")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
        return formatEventAsClassicLogText({**event, "log_system": f"worker {worker} {system}"})

    observer: ILogObserver = FileLogObserver(out or sys.stdout, format_event)
    return observer


# -- the parent ----------------------------------------------------------------


@attrs.define(eq=False)
class _Worker:
    """One worker slot: the process that fills it now, if any."""

    id: int
    process: IProcessTransport | None = None
    pid: int | None = None
    channel: _Channel | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    failures: int = 0
    restart: IDelayedCall | None = None
    ended: list[Deferred[None]] = attrs.field(factory=list)


class _Channel(LineOnlyReceiver):
    """The parent's end of a worker's lifeline."""

    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        self._supervisor = supervisor
        self._worker = worker

    def connectionMade(self) -> None:
        self._worker.channel = self

    def lineReceived(self, line: bytes) -> None:
        if line == READY:
            self._supervisor._ready(self._worker)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._worker.channel is self:
            self._worker.channel = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class _WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        self._supervisor = supervisor
        self._worker = worker

    def processEnded(self, reason: Failure) -> None:
        self._supervisor._ended(self._worker, reason)


def describe_exit(reason: Failure) -> str:
    """How a process ended, for a log line."""
    error = reason.value
    if isinstance(error, ProcessDone):
        return "exited with status 0"
    if isinstance(error, ProcessTerminated):
        if error.signal is not None:
            return f"was killed by signal {error.signal}"
        return f"exited with status {error.exitCode}"
    return f"ended: {error}"


@attrs.define(eq=False)
class Supervisor(Service):
    """
    Runs C{count} workers on the shared socket C{public}, restarting those
    that exit while it runs, and stops them all when it stops.

    @ivar reactor: spawns processes, adopts connections and keeps time.
    @ivar arguments: the command line of worker N, after the interpreter.
    @ivar environ: the environment of the workers, to which the supervisor
        adds C{PROMETHEUS_MULTIPROC_DIR}.
    @ivar metrics: the parent's metrics, which report the workers' sum once
        the supervisor has made their directory.
    """

    reactor: Any
    count: int
    public: SharedSocket
    arguments: Callable[[int], list[str]]
    environ: Mapping[str, str]
    metrics: Metrics
    executable: str = sys.executable
    restart_delay: float = RESTART_DELAY
    max_restart_delay: float = MAX_RESTART_DELAY
    stable_after: float = STABLE_AFTER
    stop_timeout: float = STOP_TIMEOUT
    temp_root: str | None = None
    """Where the metrics directory is made; None: the system's temporary directory."""
    metrics_dir: str | None = attrs.field(default=None, init=False)
    _workers: dict[int, _Worker] = attrs.field(factory=dict, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _devnull: int | None = attrs.field(default=None, init=False)
    _log: Logger = attrs.field(factory=Logger, init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    # -- what the service does -----------------------------------------------

    def startService(self) -> None:
        """Make the metrics directory, then start every worker."""
        Service.startService(self)
        self._stopping = False
        self.metrics_dir = tempfile.mkdtemp(prefix="refresherd-metrics-", dir=self.temp_root)
        self.metrics.workers_dir = self.metrics_dir
        self._devnull = os.open(os.devnull, os.O_RDWR)
        for n in range(1, self.count + 1):
            worker = self._workers[n] = _Worker(n)
            self._spawn(worker)

    def stopService(self) -> Deferred[None]:
        """
        Close every lifeline, so that each worker stops as on SIGTERM (the
        requests it answers are answered), and fire once every worker has
        exited; kill those still running after C{stop_timeout} seconds.
        """
        Service.stopService(self)
        self._stopping = True
        waits: list[Deferred[None]] = []
        for worker in self._workers.values():
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.process is None:
                continue
            ended: Deferred[None] = Deferred()
            worker.ended.append(ended)
            waits.append(ended)
            if worker.channel is not None:
                worker.channel.close()
            else:
                worker.process.signalProcess("TERM")
        timer = self.reactor.callLater(self.stop_timeout, self._kill_late)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()
            self._clean_up()

        everything = defer.gatherResults(waits, consumeErrors=True)
        return everything.addBoth(done)

    def kill(self) -> None:
        """
        End every worker at once (SIGKILL) and remove the metrics directory:
        for a second SIGTERM, when the parent ends at once too.
        """
        self._stopping = True
        for worker in self._workers.values():
            if worker.process is not None:
                try:
                    worker.process.signalProcess("KILL")
                except Exception:
                    pass  # It has just exited.
        self._clean_up()

    @property
    def pids(self) -> dict[int, int]:
        """The process id of each running worker, by worker number."""
        return {
            n: worker.pid
            for n, worker in self._workers.items()
            if worker.process is not None and worker.pid is not None
        }

    # -- one worker -------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        if self._stopping:
            return
        assert self.metrics_dir is not None and self._devnull is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.setblocking(False)
            theirs.setblocking(False)
            environ = {
                name: value
                for name, value in self.environ.items()
                if name.upper() != MULTIPROCESS_DIR
            }
            environ[MULTIPROCESS_DIR] = self.metrics_dir
            try:
                process = self.reactor.spawnProcess(
                    _WorkerProcess(self, worker),
                    self.executable,
                    [self.executable, *self.arguments(worker.id)],
                    env=environ,
                    childFDs={
                        0: self._devnull,
                        1: 1,
                        2: 2,
                        PUBLIC_FD: self.public.fd,
                        LIFELINE_FD: theirs.fileno(),
                    },
                )
            except Exception:
                self._log.failure("refresherd: cannot start worker {worker}", worker=worker.id)
                self._restart_later(worker)
                return
            worker.process, worker.pid = process, process.pid
            worker.started_at, worker.ready_at = self.reactor.seconds(), None
            self.reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, _One(_Channel(self, worker))
            )
        finally:
            ours.close()
            theirs.close()
        self._log.info(
            "refresherd: worker {worker} started (pid {pid})", worker=worker.id, pid=worker.pid
        )

    def _ready(self, worker: _Worker) -> None:
        worker.ready_at = self.reactor.seconds()

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        pid, worker.pid, worker.process = worker.pid, None, None
        if worker.channel is not None:
            worker.channel.close()
        if pid is not None and self.metrics_dir is not None:
            mark_process_dead(pid, self.metrics_dir)
        ended, worker.ended = worker.ended, []
        for d in ended:
            d.callback(None)
        how = describe_exit(reason)
        if self._stopping:
            self._log.info(
                "refresherd: worker {worker} (pid {pid}) {how}", worker=worker.id, pid=pid, how=how
            )
            return
        delay = self._restart_later(worker)
        self._log.warn(
            "refresherd: worker {worker} (pid {pid}) {how}; starting it again in {delay} s",
            worker=worker.id,
            pid=pid,
            how=how,
            delay=round(delay, 1),
        )

    def _restart_later(self, worker: _Worker) -> float:
        """Start C{worker} again after a delay that grows while it keeps failing."""
        now = self.reactor.seconds()
        stable = worker.ready_at is not None and now - worker.ready_at >= self.stable_after
        worker.failures = 0 if stable else worker.failures + 1
        delay = min(self.restart_delay * 2 ** min(worker.failures, 16), self.max_restart_delay)
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)
        return delay

    def _kill_late(self) -> None:
        for worker in self._workers.values():
            if worker.process is not None:
                self._log.warn(
                    "refresherd: worker {worker} (pid {pid}) did not stop in {timeout} s; "
                    "killing it",
                    worker=worker.id,
                    pid=worker.pid,
                    timeout=self.stop_timeout,
                )
                worker.process.signalProcess("KILL")

    def _clean_up(self) -> None:
        self.metrics.workers_dir = None
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None
