"""
C{--workers N}: N processes on one listening socket, supervised by the parent.

Unit tests first (options, the shared-store check, the workers' command line,
socket adoption, the lifeline, supervision on a fake reactor, metrics summed
over processes), then C{twistd -n refresherd --workers 2} end to end.

The end-to-end tests run the workers on a real Redis (flushed before each
test); a job returning the fetching process's pid, asked with a new argument
each time, tells the workers apart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import twisted.test
from twisted.internet.address import UNIXAddress
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
from refresherd.metrics import FLUSH_INTERVAL, MULTIPROCESS_DIR, metrics_for, render_multiprocess
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
from refresherd.run.workers.sockets import InheritedUNIXPort, SharedSocket, adopt, shareable
from refresherd.run.workers.supervisor import (
    MAX_RESTART_DELAY,
    RESTART_DELAY,
    STABLE_AFTER,
    Supervisor,
    describe_exit,
)
from refresherd.stores.memory import MemoryStore
from tests.harness import LISTENING, TWISTD, Origin, run_twistd, wait_until
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

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
    assert not shareable(SSL4ServerEndpoint(reactor, 0, None))  # type: ignore[arg-type]


def test_a_shared_endpoint_that_cannot_be_shared_is_refused() -> None:
    pem = Path(twisted.test.__file__).parent / "server.pem"
    with pytest.raises(ConfigError, match="--listen: --workers shares only TCP and UNIX"):
        listen(MemoryReactorClock(), f"ssl:0:privateKey={pem}", "--listen", Factory(), shared=True)


# -- a worker's side: the socket, the lifeline, its logs -------------------------


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    listener.setblocking(False)
    yield listener, path
    listener.close()


def test_an_inherited_unix_socket_is_left_as_the_parent_made_it(
    unix_listener: tuple[socket.socket, Path],
) -> None:
    """
    A worker's port neither changes the file's mode, nor deletes the file,
    nor shuts the socket down for the other workers when it stops.
    """
    listener, path = unix_listener
    reactor = MemoryReactorClock()
    port = adopt(reactor, os.dup(listener.fileno()), "unix", Factory.forProtocol(Protocol))
    assert isinstance(port, InheritedUNIXPort)
    assert port in reactor.readers
    assert port.getHost() == UNIXAddress(str(path).encode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    port.connectionLost(Failure(ConnectionDone()))
    assert port not in reactor.readers
    assert path.exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        listener.setblocking(True)
        accepted, _ = listener.accept()
        accepted.close()


def test_an_inherited_tcp_socket_is_adopted_and_its_descriptor_closed() -> None:
    reactor = MemoryReactorClock()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = os.dup(listener.fileno())
        adopt(reactor, fd, "inet", Factory())
        assert [(f, family) for f, family, _ in reactor.adoptedPorts] == [(fd, socket.AF_INET)]
        with pytest.raises(OSError):
            os.fstat(fd)


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

    class Out:
        def write(self, text: str) -> None:
            out.append(text)

        def flush(self) -> None:
            pass

    event = {
        "log_format": "hello {who}",
        "who": "you",
        "log_level": LogLevel.info,
        "log_namespace": "refresherd.run.tap",
        "log_time": 0.0,
    }
    worker_text_observer(3, Out())(event)  # type: ignore[arg-type]
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
    child_fds: dict[int, int]
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
        childFDs: dict[int, int],
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


def test_a_worker_that_cannot_be_spawned_is_tried_again(
    supervised: Supervised, no_logged_errors: list[dict[str, Any]]
) -> None:
    supervisor, reactor = supervised.supervisor, supervised.reactor
    spawn = reactor.spawnProcess
    failures = [OSError("no such interpreter")]

    def failing(*args: Any, **kwargs: Any) -> FakeProcess:
        if failures:
            raise failures.pop()
        return spawn(*args, **kwargs)

    reactor.spawnProcess = failing  # type: ignore[method-assign]
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
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
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


# -- metrics summed over processes -------------------------------------------------

WORKER_METRICS = """
import os, sys
from refresherd.metrics import MULTIPROCESS_DIR, metrics_for
metrics = metrics_for(["job"], multiprocess_dir=os.environ[MULTIPROCESS_DIR])
for _ in range(int(sys.argv[1])):
    metrics.count_request("job", "hit")
metrics.observe_http("/healthz", 200, 0.002)
metrics.in_flight.labels(job="job").set(2)
metrics.fetch_duration.labels(job="job").observe(0.2)
metrics.flush()  # as a worker does every second and when it stops
print(os.getpid())
"""


def run_with_metrics_dir(script: str, directory: Path, *args: str) -> str:
    """What C{script} prints, run in an interpreter whose metrics live in C{directory}."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, MULTIPROCESS_DIR: str(directory)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout


TALLIED = """
import os
from refresherd.metrics import MULTIPROCESS_DIR, metrics_for, render_multiprocess
directory = os.environ[MULTIPROCESS_DIR]
metrics = metrics_for(["job"], multiprocess_dir=directory)
for seconds in (0.0004, 0.002, 0.002, 0.3, 75.0):
    metrics.observe_http("/v1/jobs/{job}", 200, seconds)
    metrics.count_request("job", "hit")
metrics.observe_http("/healthz", 503, 0.01)
metrics.count_request("nope", "error")
assert b"refresherd_requests_total{" not in render_multiprocess(directory)  # not flushed yet
metrics.flush()
metrics.flush()  # nothing new: nothing added twice
"""

OBSERVED = """
import os
from prometheus_client import CollectorRegistry, Counter, Histogram
from refresherd.metrics import HTTP_DURATION, REQUESTS, _SECONDS
registry = CollectorRegistry()
requests = Counter(*REQUESTS, registry=registry)
http = Histogram(*HTTP_DURATION, buckets=_SECONDS, registry=registry)
for seconds in (0.0004, 0.002, 0.002, 0.3, 75.0):
    http.labels(route="/v1/jobs/{job}", code="200").observe(seconds)
    requests.labels(job="job", status="hit").inc()
http.labels(route="/healthz", code="503").observe(0.01)
requests.labels(job="_unknown", status="error").inc()
"""


def test_a_worker_flushes_its_tallies_as_prometheus_client_would_have_written_them(
    tmp_path: Path,
) -> None:
    """The hot metrics, tallied and flushed, read back as prometheus-client's own."""
    tallied, observed = tmp_path / "tallied", tmp_path / "observed"
    tallied.mkdir()
    observed.mkdir()
    run_with_metrics_dir(TALLIED, tallied)
    run_with_metrics_dir(OBSERVED, observed)
    text = render_multiprocess(str(tallied)).decode()
    assert 'refresherd_requests_total{job="job",status="hit"} 5.0' in text
    bucket = 'refresherd_http_request_duration_seconds_bucket{code="200",le="0.005",'
    assert bucket + 'route="/v1/jobs/{job}"} 3.0' in text

    def hot(text: str) -> list[str]:
        """The lines of the two hot metrics (families come in the order of their files)."""
        return sorted(s for s in text.splitlines() if "_requests" in s or "_http_" in s)

    assert hot(text) == hot(render_multiprocess(str(observed)).decode())
    # HELP and TYPE of each; two answers counted; two routes of 15 buckets, a sum, a count
    assert len(hot(text)) == 2 * 2 + 2 + 2 * (15 + 2)


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


def test_a_worker_renders_its_tallies_flushed(tmp_path: Path) -> None:
    """A worker's own C{/metrics} (with the admin API mounted) includes what it has not flushed."""
    script = """
from refresherd.metrics import MULTIPROCESS_DIR, metrics_for
import os
metrics = metrics_for(["job"], multiprocess_dir=os.environ[MULTIPROCESS_DIR])
metrics.count_request("job", "hit")
print(metrics.render().decode())
metrics.count_request("job", "hit")
print(metrics.render().decode())
"""
    first, second = run_with_metrics_dir(script, tmp_path).split("# HELP process_", 1)
    assert 'refresherd_requests_total{job="job",status="hit"} 1.0' in first
    assert 'refresherd_requests_total{job="job",status="hit"} 2.0' in second


def test_metrics_report_the_sum_over_every_worker(tmp_path: Path) -> None:
    directory = str(tmp_path)
    env = {**os.environ, MULTIPROCESS_DIR: directory}
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", WORKER_METRICS, str(n)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for n in (3, 4)
    ]
    text = render_multiprocess(directory).decode()
    assert 'refresherd_requests_total{job="job",status="hit"} 7.0' in text
    assert 'refresherd_fetches_in_flight{job="job"} 4.0' in text
    assert 'refresherd_fetch_duration_seconds_count{job="job"} 2.0' in text
    healthz = '{code="200",le="0.005",route="/healthz"} 2.0'
    assert f"refresherd_http_request_duration_seconds_bucket{healthz}" in text
    metrics = metrics_for(["job"], multiprocess_dir=directory)
    rendered = metrics.render().decode()
    assert "process_cpu_seconds_total " in rendered  # the worker's own process
    assert [line for line in rendered.splitlines() if "process_" not in line] == [
        line for line in text.splitlines()
    ]
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pids[0], directory)
    text = render_multiprocess(directory).decode()
    assert 'refresherd_fetches_in_flight{job="job"} 2.0' in text
    assert 'refresherd_requests_total{job="job",status="hit"} 7.0' in text


def test_the_parent_reports_the_workers_sum_plus_its_own(tmp_path: Path) -> None:
    """The parent's admin API purges and refreshes: its own counts add to the workers'."""
    directory = str(tmp_path)
    env = {**os.environ, MULTIPROCESS_DIR: directory}
    subprocess.run([sys.executable, "-c", WORKER_METRICS, "3"], env=env, check=True)
    parent = metrics_for(["job"])
    parent.workers_dir = directory
    parent.count_request("job", "hit")
    parent.count_request("job", "hit")
    parent.observe_http("/v1/purge", 200, 0.02)
    parent.purged.labels(kind="tag").inc()
    parent.fetch_duration.labels(job="job").observe(0.3)
    text = parent.render().decode()
    assert 'refresherd_requests_total{job="job",status="hit"} 5.0' in text
    assert 'refresherd_purged_total{kind="tag"} 1.0' in text
    assert 'refresherd_fetch_duration_seconds_count{job="job"} 2.0' in text
    assert 'refresherd_fetch_duration_seconds_bucket{job="job",le="0.25"} 1.0' in text
    assert 'refresherd_fetches_in_flight{job="job"} 2.0' in text
    purges = 'refresherd_http_request_duration_seconds_count{code="200",route="/v1/purge"}'
    assert f"{purges} 1.0" in text  # the parent's own, tallied
    assert "_created" not in text


# -- end to end --------------------------------------------------------------------

SERVING = re.compile(r"refresherd: worker (\d+) \(pid (\d+)\) serving the public API on (\S+)")

CONFIG = """
[jobs.pid]
args = ["n"]
fetch = "python"
callable = "tests.jobs:pid"
fresh = "1h"

[jobs.slow]
args = ["name"]
url = "{origin}/slow/{{name}}"
fresh = "1h"
wait_timeout = "30s"
timeout = "30s"
"""


@attrs.define
class Running:
    """A C{twistd -n refresherd --workers N} and what it printed."""

    process: subprocess.Popen[str]
    lines: list[str] = attrs.field(factory=list)
    ports: dict[str, int] = attrs.field(factory=dict)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['public']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def output(self) -> str:
        with self.lock:
            return "".join(self.lines)

    def workers(self) -> dict[int, int]:
        """The pid of each worker, as last announced."""
        return {int(m[1]): int(m[2]) for m in SERVING.finditer(self.output())}

    def wait_for_workers(self, count: int, timeout: float = 30) -> dict[int, int]:
        try:
            wait_until(
                lambda: len(self.workers()) == count or self.process.poll() is not None, timeout
            )
        except AssertionError:
            pass
        if len(self.workers()) != count:
            raise AssertionError("the workers did not start:\n" + self.output())
        return self.workers()

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start(
    tmp_path: Path,
    *args: str,
    listen: str = "tcp:0:interface=127.0.0.1:backlog=512",
    admin: str = "tcp:0:interface=127.0.0.1",
    env: dict[str, str] | None = None,
    count: int = 2,
    twistd: tuple[str, ...] = (),
    store: str | None = None,
) -> Running:
    """
    C{twistd [twistd] -n refresherd --workers count ...}, on C{store} when
    given, its metrics directory in C{tmp_path}; returns once every worker
    serves.  The workers can import C{tests.jobs}.
    """
    if store is not None:
        args = ("--store", store, *args)
    process = subprocess.Popen(
        [TWISTD, *twistd, "-n", "--pidfile=", "refresherd", "--config"]
        + [str(tmp_path / "refresherd.toml"), "--workers", str(count)]
        + ["--listen", listen, "--admin-listen", admin, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": ROOT, **(env or {})},
    )
    running = Running(process)

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                with running.lock:
                    running.lines.append(line)
                match = LISTENING.search(line)
                if match:
                    running.ports[match.group(1)] = int(match.group(3))

    threading.Thread(target=read, daemon=True).start()
    running.wait_for_workers(count)
    return running


def alive(pid: int) -> bool:
    """Whether process C{pid} runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


ROOT = str(Path(__file__).resolve().parent.parent)
"""The repository, where the workers find C{tests.jobs}."""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A real redis-server for the workers of this module to share."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def service(tmp_path: Path, origin: Origin, redis: RedisServer) -> Iterator[Callable[..., Running]]:
    """Starts C{--workers} on the module's Redis, emptied first."""
    (tmp_path / "refresherd.toml").write_text(CONFIG.format(origin=origin.url))
    redis.command("FLUSHALL")
    started: list[Running] = []

    def run(*args: str, **kwargs: Any) -> Running:
        running = start(tmp_path, *args, store=redis.url(), **kwargs)
        started.append(running)
        return running

    yield run
    for running in started:
        pids = running.workers().values()
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def metric(text: str, prefix: str) -> float:
    """
    The sum of the samples in a Prometheus text whose line starts with
    C{prefix}: a metric's name (all its samples) or its name and first labels.
    """
    total = 0.0
    for line in text.splitlines():
        rest = line[len(prefix) :]
        if line.startswith(prefix) and ("{" in prefix or rest[:1] in ("{", " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ask_until_both_answer(url: str) -> tuple[set[int], int]:
    """Ask for the pid job on new connections until two workers answered; (pids, asked)."""
    seen: set[int] = set()
    asked = 0

    def ask(n: int) -> int:
        response = httpx.get(url + f"/v1/jobs/pid?n={n}", timeout=30)
        assert response.status_code == 200, response.text
        return int(response.json()["value"])

    with ThreadPoolExecutor(16) as pool:
        while len(seen) < 2 and asked < 2000:
            seen.update(pool.map(ask, range(asked, asked + 64)))
            asked += 64
    return seen, asked


def counted_within_flush(url: str, series: str, expected: float) -> str:
    """
    The text of C{url}'s C{/metrics} once C{series} is C{expected}, which the
    workers' tallies reach within their flush interval (plus a margin for a busy
    machine); the answers were counted when the clients had them.
    """
    texts: list[str] = []

    def counted() -> bool:
        texts.append(httpx.get(url + "/metrics", timeout=10).text)
        return metric(texts[-1], series) == expected

    wait_until(counted, timeout=FLUSH_INTERVAL + 2.0)
    return texts[-1]


def test_two_workers_share_one_port_and_metrics_sum_over_both(
    service: Callable[..., Running], tmp_path: Path
) -> None:
    running = service()
    pids = running.wait_for_workers(2)
    assert running.process.pid not in pids.values()
    seen, asked = ask_until_both_answer(running.url)
    assert seen == set(pids.values())

    text = counted_within_flush(running.admin_url, 'refresherd_requests_total{job="pid"', asked)
    assert metric(text, "refresherd_requests_total") == asked
    assert 'refresherd_fetches_in_flight{job="pid"} 0.0' in text
    assert [p.name for p in tmp_path.glob("refresherd-metrics-*")] != []

    assert running.stop() == 0, running.output()
    assert not any(alive(pid) for pid in pids.values())
    assert list(tmp_path.glob("refresherd-metrics-*")) == []
    output = running.output()
    assert "Traceback" not in output
    for n, pid in pids.items():
        assert f"refresherd: worker {n} (pid {pid}) exited with status 0" in output


def test_a_killed_worker_is_started_again(service: Callable[..., Running]) -> None:
    running = service()
    before = running.wait_for_workers(2)
    os.kill(before[1], signal.SIGKILL)
    wait_until(lambda: running.workers().get(1) not in (None, before[1]), timeout=30)
    after = running.workers()
    assert after[2] == before[2]
    assert not alive(before[1])
    assert f"refresherd: worker 1 (pid {before[1]}) was killed by signal 9" in running.output()
    seen, _ = ask_until_both_answer(running.url)
    assert seen == set(after.values())
    assert running.stop() == 0


def test_workers_exit_when_the_parent_is_killed(service: Callable[..., Running]) -> None:
    running = service()
    pids = running.wait_for_workers(2)
    running.signal(signal.SIGKILL)
    running.process.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=5)


def test_sigterm_answers_the_requests_in_flight_in_a_worker_then_exits_0(
    service: Callable[..., Running], origin: Origin
) -> None:
    origin.set("/slow/a", delay=1.5)
    running = service()
    pids = running.wait_for_workers(2)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, running.url + "/v1/jobs/slow?name=a", timeout=30)
        wait_until(lambda: origin.count("/slow/a") == 1)
        assert running.stop() == 0, running.output()
        answer = pending.result(timeout=10)
    assert (answer.status_code, answer.json()["status"]) == (200, "miss")
    assert not any(alive(pid) for pid in pids.values())
    # Stopped listening: nothing accepts on the port any more.
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/healthz", timeout=5)


def test_a_second_sigterm_ends_everything_at_once(
    service: Callable[..., Running], origin: Origin
) -> None:
    origin.set("/slow/b", delay=20)
    running = service()
    pids = running.wait_for_workers(2)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, running.url + "/v1/jobs/slow?name=b", timeout=30)
        wait_until(lambda: origin.count("/slow/b") == 1)
        began = time.monotonic()
        running.signal(signal.SIGTERM)
        time.sleep(0.5)
        running.signal(signal.SIGTERM)
        assert running.process.wait(10) == -signal.SIGTERM
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=5)
        assert time.monotonic() - began < 5
        with pytest.raises(httpx.HTTPError):
            pending.result(timeout=10)


def test_workers_share_a_unix_socket_left_as_configured(
    service: Callable[..., Running], tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    running = service(listen=f"unix:{path}:mode=0600")
    pids = running.wait_for_workers(2)
    assert f"public API listening on {path}" in running.output()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
        seen: set[int] = set()
        for round in range(50):
            with ThreadPoolExecutor(8) as pool:
                seen.update(
                    pool.map(
                        lambda n: client.get(f"http://x/v1/jobs/pid?n={n}").json()["value"],
                        range(16 * round, 16 * (round + 1)),
                    )
                )
            if len(seen) == 2:
                break
    assert seen == set(pids.values())
    assert running.stop() == 0, running.output()
    assert not path.exists()


def test_admin_routes_on_the_public_listener_sum_over_the_workers(
    service: Callable[..., Running],
) -> None:
    running = service(admin="none")
    seen, asked = ask_until_both_answer(running.url)
    assert len(seen) == 2
    counted_within_flush(running.url, 'refresherd_requests_total{job="pid"', asked)
    assert running.stop() == 0


def test_workers_run_the_parents_reactor_and_log_format_with_their_number(
    service: Callable[..., Running],
) -> None:
    running = service("--log-format", "json", twistd=("--reactor", "asyncio"))
    pids = running.wait_for_workers(2)
    assert httpx.get(running.url + "/v1/jobs/pid?n=1", timeout=10).status_code == 200
    assert running.stop() == 0
    records = [json.loads(line) for line in running.output().splitlines()]
    serving = [r for r in records if "serving the public API" in r["message"]]
    assert sorted((r["worker"], r["pid"]) for r in serving) == sorted(pids.items())
    reactors = [(r.get("worker"), r["reactor"]) for r in records if "reactor" in r]
    assert sorted(reactors, key=str) == sorted(
        [(n, "twisted.internet.asyncioreactor.AsyncioSelectorReactor") for n in (None, 1, 2)],
        key=str,
    )


ANY_REDIS = ("--store", "redis://127.0.0.1:1/0")
"""A shared store for start-up checks: building the store connects to nothing."""


def start_up_error(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "refresherd.toml").write_text("")
    process = run_twistd(
        "--config", "refresherd.toml", "--workers", "2", *args, cwd=tmp_path, env=env
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode != 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert "Traceback" not in out and "Usage" not in out
    return lines[0]


def test_workers_on_an_endpoint_that_cannot_be_shared_stop_start_up(tmp_path: Path) -> None:
    pem = Path(twisted.test.__file__).parent / "server.pem"
    line = start_up_error(tmp_path, "--listen", f"ssl:0:privateKey={pem}", *ANY_REDIS)
    assert line.startswith("refresherd: --listen: --workers shares only TCP and UNIX endpoints")


def test_workers_on_a_port_in_use_stop_start_up(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = start_up_error(tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1", *ANY_REDIS)
    assert line.startswith(f"refresherd: --listen: cannot listen on 'tcp:{port}:")


def test_worker_options_given_by_hand_stop_start_up(tmp_path: Path) -> None:
    line = start_up_error(tmp_path, "--worker-id", "1")
    assert line.startswith("refresherd: --worker-fd: internal option of --workers")


SHARED_CONFIG = """
[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
wait_timeout = "30s"
"""


def test_two_workers_on_a_shared_store_fetch_a_stampeded_key_once(
    tmp_path: Path, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> None:
    """
    Through one port, 200 concurrent requests for an absent key, answered by
    both workers, make one origin request: the store is shared.
    """
    (tmp_path / "refresherd.toml").write_text(SHARED_CONFIG.format(origin=origin.url))
    origin.set("/users/hot", delay=1.0)
    running = start(tmp_path, store=shared_store.url())
    try:

        def ask(_: int) -> str:
            with httpx.Client(timeout=30) as client:
                response = client.get(running.url + "/v1/jobs/user?name=hot")
                assert response.status_code == 200, response.text
                return str(response.json()["status"])

        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(ask, range(200)))
        assert answers.count("miss") + answers.count("hit") == 200
        assert origin.count("/users/hot") == 1
        counted_within_flush(running.admin_url, 'refresherd_requests_total{job="user"', 200)
        assert running.stop() == 0, running.output()
    finally:
        if running.process.poll() is None:
            running.process.kill()


def test_the_parent_of_workers_purges_for_all_of_them(
    tmp_path: Path, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> None:
    """The admin API of the parent purges in the shared store; its count joins the workers'."""
    (tmp_path / "refresherd.toml").write_text(
        SHARED_CONFIG.format(origin=origin.url) + 'tags = ["user:{name}"]\n'
    )
    origin.set("/users/bob", body=b'{"fetch": {n}}')
    running = start(tmp_path, store=shared_store.url())
    try:
        with httpx.Client(timeout=30) as client:
            url = running.url + "/v1/jobs/user?name=bob"
            assert client.get(url).json()["status"] == "miss"
            for _ in range(10):  # whichever worker answers, it is a hit
                assert client.get(url).json()["status"] == "hit"
            purged = client.post(running.admin_url + "/v1/purge", json={"tags": ["user:bob"]})
            assert purged.json() == {"purged": 1}
            # A worker's near cache learns of the purge from Redis's change channel, usually
            # at once, at the latest near_ttl (1 s) after it read: until then it may still hit.
            late_hits, deadline = 0, time.monotonic() + 1.5
            answer = client.get(url).json()
            while answer["status"] == "hit" and time.monotonic() < deadline:
                late_hits += 1
                time.sleep(0.05)
                answer = client.get(url).json()
            assert (answer["status"], answer["value"]) == ("miss", {"fetch": 2})
        hits = 'refresherd_requests_total{job="user",status="hit"}'
        text = counted_within_flush(running.admin_url, hits, 10 + late_hits)
        assert metric(text, 'refresherd_purged_total{kind="tag"}') == 1
        assert running.stop() == 0, running.output()
    finally:
        if running.process.poll() is None:
            running.process.kill()
