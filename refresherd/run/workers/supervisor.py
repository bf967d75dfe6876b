"""The parent's supervisor: starts, restarts and stops the workers."""

from __future__ import annotations

import codecs
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from refresherd.metrics import MULTIPROCESS_DIR, Metrics
from refresherd.run.workers.lifeline import READY, OneConnection
from refresherd.run.workers.options import LIFELINE_FD, PUBLIC_FD
from refresherd.run.workers.sockets import SharedSocket

RESTART_DELAY = 0.2
"""Seconds before a worker that exited is started again, the first time."""
MAX_RESTART_DELAY = 30.0
"""The longest delay between restarts of a worker that keeps exiting."""
STABLE_AFTER = 10.0
"""A worker that exits after serving this long is restarted after L{RESTART_DELAY} again."""
STOP_TIMEOUT = 30.0
"""Seconds that workers have to stop before the parent kills them."""
READY_TIMEOUT = 30.0
"""Seconds a worker started by a reload has to be ready before the reload fails."""


class RolloutFailed(Exception):
    """A worker started by a reload was not ready in time, or exited first (one line)."""


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
    ready: Deferred[None] | None = None
    """For a worker started by a reload: fires once it is ready (fails if it exits first)."""
    retired: bool = False
    """Replaced by a reload (or never ready): it stops, and is not started again."""


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


OUTPUT_LINE_MOST = 1 << 20
"""Characters of a worker's output line the parent holds: a longer line is cut there."""


class _WorkerProcess(ProcessProtocol):
    """
    A worker's process: its end told to the supervisor; with C{output}, the
    lines it writes to its standard output and error relayed there whole
    (never half a line of one beside half a line of another).
    """

    def __init__(
        self, supervisor: Supervisor, worker: _Worker, output: Callable[[str], None] | None
    ) -> None:
        self._supervisor = supervisor
        self._worker = worker
        self._output = output
        self._partial: dict[int, tuple[list[str], int]] = {}
        """Per descriptor, the text of a line begun and not ended yet, and its length."""
        self._decoders: dict[int, codecs.IncrementalDecoder] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self._output is None:
            return
        decoder = self._decoders.get(childFD)
        if decoder is None:
            decoder = self._decoders[childFD] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data)
        pieces, size = self._partial.pop(childFD, ([], 0))
        end = text.rfind("\n") + 1
        if end:
            self._output("".join(pieces) + text[:end])
            pieces, size = [], 0
        rest = text[end:]
        if rest:
            pieces.append(rest)
            size += len(rest)
        if size >= OUTPUT_LINE_MOST:  # a line that long is cut, its first part a line
            self._output("".join(pieces) + "\n")
            pieces, size = [], 0
        if pieces:
            self._partial[childFD] = (pieces, size)

    def processEnded(self, reason: Failure) -> None:
        if self._output is not None:
            for fd, decoder in self._decoders.items():
                pieces, _ = self._partial.pop(fd, ([], 0))
                rest = "".join(pieces) + decoder.decode(b"", final=True)
                if rest:  # a last line with no end
                    self._output(rest + "\n")
            self._decoders.clear()
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
    output: Callable[[str], None] | None = None
    """Where the workers' log lines go (the parent's C{--logfile}); None: the workers
    write to the parent's standard output and error themselves."""
    metrics_dir: str | None = attrs.field(default=None, init=False)
    _workers: dict[int, _Worker] = attrs.field(factory=dict, init=False)
    _retiring: list[_Worker] = attrs.field(factory=list, init=False)
    """Workers replaced by a reload that have not exited yet."""
    _starting: _Worker | None = attrs.field(default=None, init=False)
    """The worker a reload started, until it is ready."""
    ready_timeout: float = READY_TIMEOUT
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
        for worker in self._every():
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
        for worker in self._every():
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

    def _every(self) -> list[_Worker]:
        """Every worker, those a reload replaced that have not exited yet included."""
        starting = [] if self._starting is None else [self._starting]
        return [*self._workers.values(), *self._retiring, *starting]

    # -- a reload ---------------------------------------------------------------

    def replace(self, arguments: Callable[[int], list[str]]) -> Deferred[None]:
        """
        Replace the workers one at a time with workers started with
        C{arguments} (from now on also those started again): each old one is
        told to stop (it answers what it took) only once its successor is
        ready, so that the shared socket always has workers accepting.  Fails
        with L{RolloutFailed} when a new worker is not ready within
        C{ready_timeout} seconds: the rollout stops there, the workers not
        replaced yet go on.
        """
        self.arguments = arguments
        return Deferred.fromCoroutine(self._replace_all())

    async def _replace_all(self) -> None:
        for n in sorted(self._workers):
            if self._stopping:
                return
            new = self._starting = _Worker(n, ready=Deferred())
            assert new.ready is not None
            self._spawn(new)
            if new.process is None:
                self._starting = None
                raise RolloutFailed(f"--workers: cannot start a new worker {n}")
            try:
                await new.ready.addTimeout(self.ready_timeout, self.reactor)
            except Exception as e:
                self._starting = None
                self._retire(new, kill=True)
                why = "exited" if isinstance(e, RolloutFailed) else "was not ready"
                raise RolloutFailed(
                    f"--workers: the new worker {n} {why} within {self.ready_timeout:g} s; "
                    f"the workers not replaced yet go on"
                ) from None
            old, self._workers[n] = self._workers[n], new
            new.ready, self._starting = None, None
            self._retire(old)

    def keep_config(self, contents: bytes) -> str:
        """
        The path of a file holding C{contents} (a configuration the parent
        validated), for the workers started from now on; replaced at once
        (atomically) by the next.  In the metrics directory: the parent's own.
        """
        assert self.metrics_dir is not None
        path = os.path.join(self.metrics_dir, "config.toml")
        fd, written = tempfile.mkstemp(dir=self.metrics_dir, prefix="config-")
        with os.fdopen(fd, "wb") as f:
            f.write(contents)
        os.replace(written, path)
        return path

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        """A worker replaced (or never ready) stops, and is not started again."""
        worker.retired = True
        if worker.restart is not None and worker.restart.active():
            worker.restart.cancel()
        worker.restart = None
        if worker.process is None:
            return
        self._retiring.append(worker)
        if kill:
            worker.process.signalProcess("KILL")
        elif worker.channel is not None:
            worker.channel.close()
        else:
            worker.process.signalProcess("TERM")

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
                relayed = self.output is not None
                process = self.reactor.spawnProcess(
                    _WorkerProcess(self, worker, self.output),
                    self.executable,
                    [self.executable, *self.arguments(worker.id)],
                    env=environ,
                    childFDs={
                        0: self._devnull,
                        1: "r" if relayed else 1,
                        2: "r" if relayed else 2,
                        PUBLIC_FD: self.public.fd,
                        LIFELINE_FD: theirs.fileno(),
                    },
                )
            except Exception:
                self._log.failure("refresherd: cannot start worker {worker}", worker=worker.id)
                if worker.ready is None:
                    self._restart_later(worker)
                return
            worker.process, worker.pid = process, process.pid
            worker.started_at, worker.ready_at = self.reactor.seconds(), None
            self.reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, OneConnection(_Channel(self, worker))
            )
        finally:
            ours.close()
            theirs.close()
        self._log.info(
            "refresherd: worker {worker} started (pid {pid})", worker=worker.id, pid=worker.pid
        )

    def _ready(self, worker: _Worker) -> None:
        worker.ready_at = self.reactor.seconds()
        if worker.ready is not None and not worker.ready.called:
            worker.ready.callback(None)

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
        if worker.ready is not None and not worker.ready.called:
            worker.ready.errback(RolloutFailed(how))
        if worker in self._retiring:
            self._retiring.remove(worker)
        if self._stopping or worker.retired:
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
        delay = min(self.restart_delay * 2.0 ** min(worker.failures, 16), self.max_restart_delay)
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)
        return delay

    def _kill_late(self) -> None:
        for worker in self._every():
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
