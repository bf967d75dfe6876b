"""
C{--workers N} on real sockets and processes, without twistd: a worker adopts
the listening socket it inherits (TCP and UNIX), and the metrics that worker
processes (python subprocesses here) write are summed, as prometheus-client
would have summed them.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from refresherd.metrics import MULTIPROCESS_DIR, metrics_for, render_multiprocess
from refresherd.run.workers.sockets import InheritedUNIXPort, adopt

# -- a worker's side: the listening socket it inherits ---------------------------------


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
    # refresherd_hot_keys is read from the hot keys view when scraped, never summed from files
    # (tests/e2e/test_workers.py checks it).
    own = ("process_", "refresherd_hot_keys")
    assert [line for line in rendered.splitlines() if not any(o in line for o in own)] == [
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
