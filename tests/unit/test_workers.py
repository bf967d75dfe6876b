"""
C{--workers N}, without a process or a socket: options, the shared-store
check, the workers' command line, a worker's descriptor, lifeline and logs,
supervision on a fake reactor, shutdown signals, a worker's metrics flushed
on a fake clock.  Sockets adopted for real and metrics summed over python
processes: tests/integration/test_workers.py; C{twistd -n refresherd
--workers 2}: tests/e2e/test_workers.py.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import twisted.test
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from refresherd.core.refresher import Refresher
from refresherd.errors import ConfigError
from refresherd.metrics import FLUSH_INTERVAL, MULTIPROCESS_DIR, metrics_for
from refresherd.run.build import listen, twistd_reactor, worker_plugin_options
from refresherd.run.services import Engine, RefresherdService, ThreadPools
from refresherd.run.settings import Settings, require_shared_store, settings_from
from refresherd.run.signals import ShutdownSignals
from refresherd.run.workers.lifeline import connect_lifeline
from refresherd.run.workers.logs import WorkerLogObserver, worker_text_observer
from refresherd.run.workers.options import (
    LIFELINE_FD,
    PUBLIC_FD,
    WorkerOptions,
    worker_arguments,
    worker_options,
)
from refresherd.run.workers.options import TWISTD as TWISTD_PROGRAM
from refresherd.run.workers.sockets import SharedSocket, adopt, shareable
from refresherd.run.workers.supervisor import (
    MAX_RESTART_DELAY,
    OUTPUT_LINE_MOST,
    READY_TIMEOUT,
    RESTART_DELAY,
    STABLE_AFTER,
    RolloutFailed,
    Supervisor,
    describe_exit,
)
from refresherd.stores.memory import MemoryStore

# -- the shared-store check ------------------------------------------------------


def settings(tmp_path: Path, **options: str) -> Settings:
    config = tmp_path / "refresherd.toml"
    config.write_text("")
    return settings_from({"config": str(config), **options}, {})


@pytest.mark.parametrize("workers", ["2", "8"])
def test_workers_with_the_memory_store_are_refused(tmp_path: Path, workers: str) -> None:
    with pytest.raises(ConfigError, match=f"--workers {workers}: needs a shared store"):
        require_shared_store(settings(tmp_path, workers=workers))
    with pytest.raises(ConfigError):
        require_shared_store(settings(tmp_path, workers=workers, store="memory://?max_bytes=1000"))


@pytest.mark.parametrize(
    "store", ["redis://127.0.0.1:6379/0", "memcached://127.0.0.1:11211", "nonsense://x"]
)
def test_workers_with_any_other_store_go_on_to_the_store_factory(
    tmp_path: Path, store: str
) -> None:
    require_shared_store(settings(tmp_path, workers="2", store=store))


def test_one_worker_is_fine_with_the_memory_store(tmp_path: Path) -> None:
    require_shared_store(settings(tmp_path, workers="1"))


# -- internal options and the workers' command line ------------------------------


def test_a_process_without_worker_options_is_not_a_worker() -> None:
    assert worker_options({"workers": "2"}) is None


def test_worker_options_are_read() -> None:
    given = {"worker-id": "2", "worker-fd": "3", "worker-family": "inet6", "worker-lifeline": "4"}
    assert worker_options(given) == WorkerOptions(2, 3, "inet6", 4)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"worker-id": "1"}, "--worker-fd: internal option of --workers"),
        (
            {"worker-id": "1", "worker-fd": "x", "worker-family": "inet", "worker-lifeline": "4"},
            "--worker-fd: internal option of --workers, needs a whole number, not 'x'",
        ),
        (
            {"worker-id": "1", "worker-fd": "3", "worker-family": "ipx", "worker-lifeline": "4"},
            "--worker-family: internal option of --workers, one of inet, inet6, unix, not 'ipx'",
        ),
    ],
)
def test_worker_option_mistakes_are_one_line(given: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        worker_options(given)


class TwistdOptions(dict[str, Any]):
    """twistd's own options, as the plugin's options see them (C{options.parent})."""


class PluginOptions(dict[str, Any]):
    parent: TwistdOptions | None = None


def test_workers_get_the_parents_options_with_an_absolute_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text("")
    options = PluginOptions(
        {
            "config": "mine.toml",
            "listen": "tcp:8080",
            "admin-listen": None,
            "store": "redis://h:1/0",
            "log-format": "json",
            "workers": "4",
        }
    )
    options.parent = TwistdOptions(reactor="asyncio")
    plugin = worker_plugin_options(options, settings_from(options, {}))
    assert plugin == [
        f"--config={tmp_path / 'mine.toml'}",
        "--listen=tcp:8080",
        "--store=redis://h:1/0",
        "--log-format=json",
    ]
    arguments = worker_arguments(3, "unix", plugin, twistd_reactor(options))
    assert arguments == [
        "-P",
        "-c",
        TWISTD_PROGRAM,
        "-n",
        "--pidfile=",
        "--reactor=asyncio",
        "refresherd",
        *plugin,
        "--worker-id=3",
        f"--worker-fd={PUBLIC_FD}",
        "--worker-family=unix",
        f"--worker-lifeline={LIFELINE_FD}",
    ]
    assert not any(argument.startswith("--workers") for argument in arguments)


def test_workers_read_the_default_config_file_the_parent_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert worker_plugin_options({}, settings_from({}, {})) == []
    (tmp_path / "refresherd.toml").write_text("")
    plugin = worker_plugin_options({}, settings_from({}, {}))
    assert plugin == [f"--config={tmp_path / 'refresherd.toml'}"]
    assert twistd_reactor({}) is None


def test_only_tcp_and_unix_endpoints_are_shared(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    assert shareable(TCP4ServerEndpoint(reactor, 0))
    assert shareable(TCP6ServerEndpoint(reactor, 0))
    assert shareable(UNIXServerEndpoint(reactor, str(tmp_path / "s")))
    assert not shareable(SSL4ServerEndpoint(reactor, 0, None))


def test_a_shared_endpoint_that_cannot_be_shared_is_refused() -> None:
    pem = Path(twisted.test.__file__).parent / "server.pem"
    with pytest.raises(ConfigError, match="--listen: --workers shares only TCP and UNIX"):
        listen(MemoryReactorClock(), f"ssl:0:privateKey={pem}", "--listen", Factory(), shared=True)


# -- a worker's side: a descriptor that is no socket, the lifeline, its logs ------------


def test_a_descriptor_that_is_no_socket_is_a_one_line_error() -> None:
    read, write = os.pipe()
    os.close(write)
    with pytest.raises(ConfigError, match=f"--worker-fd: cannot adopt file descriptor {read}"):
        adopt(MemoryReactorClock(), read, "unix", Factory())
    os.close(read)


def test_the_lifeline_says_ready_and_its_loss_stops_the_worker() -> None:
    reactor = MemoryReactorClock()
    ours, theirs = socket.socketpair()
    lost: list[bool] = []
    lifeline = connect_lifeline(reactor, os.dup(theirs.fileno()), lambda: lost.append(True))
    [(_, family, factory)] = reactor.adoptedStreamConnections
    assert family == socket.AF_UNIX
    assert factory.buildProtocol(None) is lifeline
    transport = StringTransport()
    lifeline.makeConnection(transport)
    lifeline.ready()
    assert transport.value() == b"ready\r\n"
    assert lost == []
    lifeline.connectionLost(Failure(ConnectionDone()))
    assert lost == [True]
    ours.close()
    theirs.close()


def test_worker_logs_name_the_worker() -> None:
    out: list[str] = []

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            out.append(text)
            return len(text)

    event = {
        "log_format": "hello {who}",
        "who": "you",
        "log_level": LogLevel.info,
        "log_namespace": "refresherd.run.tap",
        "log_time": 0.0,
    }
    worker_text_observer(3, Out())(event)
    assert out == ["1970-01-01T00:00:00+0000 [worker 3 refresherd.run.tap#info] hello you\n"]
    seen: list[dict[str, Any]] = []
    WorkerLogObserver(3, seen.append)(event)
    assert seen == [{**event, "worker": 3}]


# -- supervision, on a fake reactor ----------------------------------------------


@attrs.define
class FakeProcess:
    pid: int
    protocol: ProcessProtocol
    args: list[str]
    env: dict[str, str]
    child_fds: dict[int, int | str]
    signals: list[str] = attrs.field(factory=list)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        reason = ProcessDone(0) if code == 0 and signal is None else ProcessTerminated(code, signal)
        self.protocol.processEnded(Failure(reason))


class ProcessReactor(MemoryReactorClock):
    """A fake reactor that spawns fake processes."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        childFDs: dict[int, int | str],
    ) -> FakeProcess:
        assert args[0] == executable
        process = FakeProcess(1000 + len(self.processes), protocol, args[1:], env, childFDs)
        self.processes.append(process)
        return process

    def channel(self, index: int) -> tuple[Protocol, StringTransport]:
        """The parent's end of the lifeline of the index-th process, connected."""
        _, _, factory = self.adoptedStreamConnections[index]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


@attrs.define
class Supervised:
    reactor: ProcessReactor
    supervisor: Supervisor
    public: socket.socket

    def connect(self) -> list[StringTransport]:
        """Connect every lifeline adopted so far, each worker saying ready."""
        transports = []
        for i in range(len(self.reactor.adoptedStreamConnections)):
            protocol, transport = self.reactor.channel(i)
            protocol.dataReceived(b"ready\r\n")
            transports.append(transport)
        return transports


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    reactor = ProcessReactor()
    public = socket.socket()
    supervisor = Supervisor(
        reactor,
        2,
        SharedSocket(public.fileno(), "inet"),
        lambda n: ["worker", str(n)],
        {"HOME": "/home", "prometheus_multiproc_dir": "/elsewhere"},
        metrics_for(["job"]),
        executable="/usr/bin/python3",
        temp_root=str(tmp_path),
    )
    yield Supervised(reactor, supervisor, public)
    if supervisor.running:
        supervisor.kill()
    public.close()


def test_the_supervisor_starts_every_worker_on_the_shared_socket(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    directory = supervisor.metrics_dir
    assert directory is not None and os.path.isdir(directory)
    assert supervisor.metrics.workers_dir == directory
    assert [p.args for p in reactor.processes] == [["worker", "1"], ["worker", "2"]]
    for process in reactor.processes:
        assert process.env == {"HOME": "/home", MULTIPROCESS_DIR: directory}
        fds = process.child_fds
        assert sorted(fds) == [0, 1, 2, PUBLIC_FD, LIFELINE_FD]
        assert (fds[1], fds[2], fds[PUBLIC_FD]) == (1, 2, supervised.public.fileno())
    assert supervisor.pids == {1: 1000, 2: 1001}
    assert len(reactor.adoptedStreamConnections) == 2


def relaying(supervised: Supervised) -> list[str]:
    """The supervisor started with an output: the lines it relays, as they come."""
    relayed: list[str] = []
    supervised.supervisor.output = relayed.append
    supervised.supervisor.startService()
    return relayed


def test_with_an_output_the_workers_lines_are_relayed_whole(supervised: Supervised) -> None:
    relayed = relaying(supervised)
    reactor = supervised.reactor
    one, two = reactor.processes
    assert (one.child_fds[1], one.child_fds[2]) == ("r", "r")  # pipes the parent reads
    one.protocol.childDataReceived(1, b"first line\nsecond ")
    two.protocol.childDataReceived(1, b"worker 2 line\n")
    one.protocol.childDataReceived(2, b"an error ")
    one.protocol.childDataReceived(1, b"line\nthird, unfinished")
    assert relayed == ["first line\n", "worker 2 line\n", "second line\n"]
    one.protocol.childDataReceived(2, "\u00e9t\u00e9\n".encode() + b"\xff\n")
    assert relayed[3:] == ["an error \u00e9t\u00e9\n\ufffd\n"]
    one.exit(code=1)  # what it wrote last, with no end of line, is not lost
    assert relayed[4:] == ["third, unfinished\n"]


def test_a_worker_line_with_no_end_is_relayed_once_it_is_too_long(supervised: Supervised) -> None:
    relayed = relaying(supervised)
    reactor = supervised.reactor
    protocol = reactor.processes[0].protocol
    for _ in range(OUTPUT_LINE_MOST // 4096):
        protocol.childDataReceived(1, b"x" * 4096)
    assert relayed == ["x" * OUTPUT_LINE_MOST + "\n"]  # never held for ever, a line of its own
    protocol.childDataReceived(2, b"an error\n")
    protocol.childDataReceived(1, b"xx\n")
    assert relayed[1:] == ["an error\n", "xx\n"]  # nothing glued to the cut line


def test_a_character_split_between_two_reads_is_relayed_whole(supervised: Supervised) -> None:
    relayed = relaying(supervised)
    reactor = supervised.reactor
    protocol = reactor.processes[0].protocol
    encoded = "été\n".encode()
    protocol.childDataReceived(1, encoded[:1])
    protocol.childDataReceived(1, encoded[1:])
    assert relayed == ["été\n"]


def test_a_worker_that_exits_is_started_again(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    supervised.connect()
    reactor.advance(STABLE_AFTER)
    reactor.processes[0].exit(signal=9)
    assert supervisor.pids == {2: 1001}
    reactor.advance(RESTART_DELAY)
    assert [p.args for p in reactor.processes[2:]] == [["worker", "1"]]
    assert supervisor.pids == {1: 1002, 2: 1001}


def test_a_worker_that_keeps_exiting_is_started_again_ever_later(
    supervised: Supervised,
) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    delays = []
    worker_1 = reactor.processes[0]
    for _ in range(12):
        worker_1.exit(code=1)
        [restart] = [call for call in reactor.getDelayedCalls() if call.active()]
        delays.append(round(restart.getTime() - reactor.seconds(), 3))
        reactor.advance(restart.getTime() - reactor.seconds())
        worker_1 = reactor.processes[-1]
        assert worker_1.args == ["worker", "1"]
    assert delays[:4] == [0.4, 0.8, 1.6, 3.2]
    assert delays[-1] == MAX_RESTART_DELAY


def test_the_metrics_of_a_worker_that_exited_are_marked_dead(supervised: Supervised) -> None:
    supervisor = supervised.supervisor
    supervisor.startService()
    assert supervisor.metrics_dir is not None
    gauge = Path(supervisor.metrics_dir) / "gauge_livesum_1000.db"
    counter = Path(supervisor.metrics_dir) / "counter_1000.db"
    gauge.write_bytes(b"")
    counter.write_bytes(b"")
    supervised.reactor.processes[0].exit(code=1)
    assert not gauge.exists()
    assert counter.exists()


def test_stopping_closes_the_lifelines_and_waits_for_every_worker(
    supervised: Supervised,
) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    transports = supervised.connect()
    directory = supervisor.metrics_dir
    stopped = supervisor.stopService()
    assert [t.disconnecting for t in transports] == [True, True]
    assert not stopped.called
    reactor.processes[0].exit()
    assert not stopped.called
    reactor.processes[1].exit()
    assert stopped.called
    reactor.advance(60)
    assert len(reactor.processes) == 2  # none started again
    assert directory is not None and not os.path.exists(directory)
    assert supervisor.metrics.workers_dir is None
    assert [p.signals for p in reactor.processes] == [[], []]


def test_a_worker_without_a_lifeline_is_asked_to_stop_by_signal(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    supervisor.stopService()
    assert [p.signals for p in reactor.processes] == [["TERM"], ["TERM"]]


def test_workers_that_do_not_stop_in_time_are_killed(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    supervised.connect()
    stopped = supervisor.stopService()
    reactor.processes[0].exit()
    reactor.advance(supervisor.stop_timeout)
    assert [p.signals for p in reactor.processes] == [[], ["KILL"]]
    reactor.processes[1].exit(signal=9)
    assert stopped.called


def test_a_restart_due_when_stopping_is_cancelled(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    reactor.processes[0].exit(code=1)
    supervisor.stopService()
    reactor.processes[1].exit()
    reactor.advance(60)
    assert len(reactor.processes) == 2


def test_kill_ends_every_worker_at_once(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    directory = supervisor.metrics_dir
    supervisor.kill()
    assert [p.signals for p in reactor.processes] == [["KILL"], ["KILL"]]
    assert directory is not None and not os.path.exists(directory)
    reactor.processes[0].exit(signal=9)
    reactor.advance(60)
    assert len(reactor.processes) == 2


# -- a reload: the workers replaced one at a time ------------------------------------


def test_a_reload_replaces_each_worker_once_its_successor_is_ready(
    supervised: Supervised,
) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    old = supervised.connect()
    rolled = supervisor.replace(lambda n: ["new", str(n)])
    assert [p.args for p in reactor.processes[2:]] == [["new", "1"]]  # one at a time
    assert [t.disconnecting for t in old] == [False, False]  # the old ones serve meanwhile
    protocol, new_1 = reactor.channel(2)
    protocol.dataReceived(b"ready\r\n")
    assert [t.disconnecting for t in old] == [True, False]  # the first old one drains
    assert [p.args for p in reactor.processes[3:]] == [["new", "2"]]
    reactor.processes[0].exit()  # and exits: not started again
    protocol, new_2 = reactor.channel(3)
    protocol.dataReceived(b"ready\r\n")
    assert rolled.called and old[1].disconnecting
    reactor.processes[1].exit()
    reactor.advance(60)
    assert supervisor.pids == {1: 1002, 2: 1003}
    reactor.processes[2].exit(code=1)  # a new worker that exits is started the new way
    reactor.advance(60)
    assert reactor.processes[-1].args == ["new", "1"]


def test_a_new_worker_not_ready_in_time_stops_the_reload_and_the_old_ones_go_on(
    supervised: Supervised,
) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    old = supervised.connect()
    rolled = supervisor.replace(lambda n: ["new", str(n)])
    reactor.advance(READY_TIMEOUT)
    failures: list[Failure] = []
    rolled.addErrback(failures.append)
    [failure] = failures
    assert isinstance(failure.value, RolloutFailed)
    assert str(failure.value) == (
        "--workers: the new worker 1 was not ready within 30 s; the workers not replaced yet go on"
    )
    assert reactor.processes[2].signals == ["KILL"]
    reactor.processes[2].exit(signal=9)
    reactor.advance(60)
    assert [t.disconnecting for t in old] == [False, False]
    assert supervisor.pids == {1: 1000, 2: 1001} and len(reactor.processes) == 3


def test_a_new_worker_that_exits_stops_the_reload(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    supervised.connect()
    rolled = supervisor.replace(lambda n: ["new", str(n)])
    reactor.processes[2].exit(code=1)
    failures: list[Failure] = []
    rolled.addErrback(failures.append)
    assert "the new worker 1 exited within 30 s" in str(failures[0].value)
    reactor.advance(60)
    assert supervisor.pids == {1: 1000, 2: 1001} and len(reactor.processes) == 3


def test_stopping_during_a_reload_stops_the_new_worker_too(supervised: Supervised) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    supervisor.startService()
    supervised.connect()
    supervisor.replace(lambda n: ["new", str(n)]).addErrback(lambda _: None)
    stopped = supervisor.stopService()
    assert reactor.processes[2].signals == ["TERM"]  # no lifeline connected yet
    for process in reactor.processes:
        process.exit()
    assert stopped.called


def test_the_configuration_handed_to_new_workers_is_kept_in_the_private_directory(
    supervised: Supervised,
) -> None:
    supervisor = supervised.supervisor
    supervisor.startService()
    path = supervisor.keep_config(b"[jobs.a]\n")
    assert Path(path).read_bytes() == b"[jobs.a]\n"
    assert Path(path).parent == Path(str(supervisor.metrics_dir))
    assert supervisor.keep_config(b"[jobs.b]\n") == path
    assert Path(path).read_bytes() == b"[jobs.b]\n"


def test_a_worker_reads_the_configuration_its_parent_validated(tmp_path: Path) -> None:
    (tmp_path / "refresherd.toml").write_text(
        '[jobs.changed_since]\nurl = "http://h/"\nfresh = 1\n'
    )
    validated = tmp_path / "validated.toml"
    validated.write_text('[jobs.validated]\nurl = "http://h/"\nfresh = 1\n')
    options = {
        "config": str(tmp_path / "refresherd.toml"),
        "worker-id": "1",
        "worker-fd": "3",
        "worker-family": "inet",
        "worker-lifeline": "4",
        "worker-config": str(validated),
    }
    settings = settings_from(options, {})
    assert list(settings.config.jobs) == ["validated"]
    assert settings.config.source == str(tmp_path / "refresherd.toml")
    with pytest.raises(ConfigError, match="^--worker-config: cannot read"):
        settings_from({**options, "worker-config": str(tmp_path / "gone")}, {})


def test_a_worker_that_cannot_be_spawned_is_tried_again(
    supervised: Supervised,
    no_logged_errors: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    spawn = reactor.spawnProcess
    failures = [OSError("no such interpreter")]

    def failing(*args: Any, **kwargs: Any) -> FakeProcess:
        if failures:
            raise failures.pop()
        return spawn(*args, **kwargs)

    monkeypatch.setattr(reactor, "spawnProcess", failing)
    supervisor.startService()
    assert [e["log_failure"].value.args for e in no_logged_errors] == [("no such interpreter",)]
    no_logged_errors.clear()
    assert supervisor.pids == {2: 1000}
    reactor.advance(1)
    assert supervisor.pids == {1: 1001, 2: 1000}


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (ProcessDone(0), "exited with status 0"),
        (ProcessTerminated(3), "exited with status 3"),
        (ProcessTerminated(None, 9), "was killed by signal 9"),
    ],
)
def test_how_a_worker_ended_is_told_in_words(reason: Exception, text: str) -> None:
    assert describe_exit(Failure(reason)) == text


# -- shutdown signals ----------------------------------------------------------------


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.mark.usefixtures("signal_handlers")
def test_a_graceful_stop_makes_the_next_signal_end_the_process() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    signals = ShutdownSignals(reactor)
    signals.install()
    assert signal.getsignal(signal.SIGTERM) == signals._first
    signals.stop()
    assert reactor.hasStopped
    assert signal.getsignal(signal.SIGTERM) == signals._second
    assert signal.getsignal(signal.SIGINT) == signals._second
    signals.stop()  # the reactor stopping already is no error


@pytest.mark.usefixtures("signal_handlers")
def test_sighup_reloads_in_the_reactor_thread_and_a_worker_ignores_it() -> None:
    reactor = MemoryReactorClock()
    reloads: list[str] = []
    called: list[Any] = []
    reactor.callFromThread = lambda f, *a: called.append(f)  # type: ignore[attr-defined]
    signals = ShutdownSignals(reactor, reload=lambda: reloads.append("reload"))
    signals.install()
    handler = signal.getsignal(signal.SIGHUP)
    assert handler == signals._hangup
    signals._hangup(signal.SIGHUP, None)
    assert reloads == []  # not in the signal handler: in the reactor
    called.pop()()
    assert reloads == ["reload"]
    ShutdownSignals(reactor).install()  # a worker: its parent reloads
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


# -- a worker's metrics, flushed on a fake clock -------------------------------------


def test_a_worker_service_flushes_its_metrics_every_interval_and_when_stopped(
    tmp_path: Path,
) -> None:
    """
    In this process prometheus-client keeps the values in memory (the
    directory is read when it is imported), which shows when they were written.
    """
    clock = MemoryReactorClock()
    metrics = metrics_for(["job"], multiprocess_dir=str(tmp_path))
    refresher = Refresher(MemoryStore(clock), {}, clock, "rfd", metrics)
    port = clock.listenTCP(0, Factory())
    engine = Engine(refresher, ThreadPools())
    service = RefresherdService(engine, [port], [], worker=1)
    service.startService()
    written = metrics.requests.labels(job="job", status="hit")
    metrics.count_request("job", "hit")
    clock.advance(FLUSH_INTERVAL - 0.001)
    assert written._value.get() == 0
    clock.advance(0.001)
    assert written._value.get() == 1
    metrics.count_request("job", "hit")
    metrics.count_request("job", "hit")
    stopped = service.stopService()
    assert stopped.called
    assert written._value.get() == 3
    assert clock.getDelayedCalls() == []
