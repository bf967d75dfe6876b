"""
C{twistd -n refresherd --workers 2} end to end: N processes on one listening
socket, supervised by the parent.

The workers run on a real Redis (flushed before each test); a job returning
the fetching process's pid, asked with a new argument each time, tells the
workers apart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
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

from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.metrics import FLUSH_INTERVAL
from tests.harness import LISTENING, TWISTD, Origin, run_twistd, wait_until
from tests.load import Load
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

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
    try:
        running.wait_for_workers(count)
    except BaseException:
        kill(running)  # nothing left behind by a start that failed
        raise
    return running


def kill(running: Running) -> None:
    """SIGKILL the parent and every worker it announced."""
    pids = running.workers().values()
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process C{pid} runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


ROOT = str(Path(__file__).resolve().parents[2])
"""The repository, where the workers find C{tests.jobs}."""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A real redis-server for the workers of this module to share."""
    with RedisServer() as server:
        yield server


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
        kill(running)


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


ADDED = """
[jobs.added]
args = ["n"]
fetch = "python"
callable = "tests.jobs:pid"
fresh = "1h"
"""


def test_a_reload_replaces_the_workers_one_at_a_time_under_load(
    service: Callable[..., Running], tmp_path: Path, origin: Origin
) -> None:
    running = service()
    pids = running.wait_for_workers(2)
    os.kill(pids[1], signal.SIGHUP)  # a worker ignores it: its parent reloads
    config = tmp_path / "refresherd.toml"
    keys = [f"pid?n={n}" for n in range(20)]
    with Load([running.url], keys, clients=4, path="/v1/jobs/%s", pause=0.005) as load:
        load.wait_for(100)
        config.write_text(CONFIG.format(origin=origin.url) + ADDED)
        running.signal(signal.SIGHUP)
        wait_until(lambda: "refresherd: reloaded" in running.output(), timeout=30)
        for _ in range(4):  # whichever worker answers
            added = httpx.get(running.url + "/v1/jobs/added?n=1", timeout=5)
            assert added.status_code == 200, added.text
        load.wait_for(100, since=load.now())

        # A broken file: refused, the workers go on as they are.
        replaced = running.workers()
        config.write_text(CONFIG.format(origin=origin.url) + ADDED + "[jobs.broken]\n")
        answer = httpx.post(running.admin_url + "/v1/reload", json={}, timeout=30)
        assert (answer.status_code, answer.json()["error"]["code"]) == (422, "reload_refused")
        assert "jobs.broken" in answer.json()["error"]["message"]
        load.wait_for(50, since=load.now())
    outcomes = load.results()
    text = httpx.get(running.admin_url + "/metrics", timeout=5).text
    assert metric(text, "refresherd_config_last_reload_successful") == 0
    assert running.workers() == replaced
    assert set(replaced.values()).isdisjoint(pids.values())
    assert not any(alive(pid) for pid in pids.values())
    # A replaced worker closes its idle kept-alive connections: a request its client sent on
    # one at that moment is closed unanswered, never received, which an HTTP/1.1 client may
    # send again (RFC 9112 9.3.1), as in a rolling restart.  At most once per connection
    # and replaced worker; nothing else fails.
    closed = [o for o in outcomes if o.kind == "unanswered:RemoteProtocolError"]
    failed = [o for o in outcomes if o.kind != "value" and o not in closed]
    assert failed == [], "\n".join(o.describe() for o in failed[:20])
    assert len(closed) <= 4 * 2, "\n".join(o.describe() for o in closed)
    assert running.stop() == 0, running.output()


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
    started = time.time()
    seen, asked = ask_until_both_answer(running.url)
    assert len(seen) == 2
    counted_within_flush(running.url, 'refresherd_requests_total{job="pid"', asked)
    # The worker that answers: its own figures added to the other worker's file, which it
    # writes every second (not at the same moment as its metrics).
    statuses: list[dict[str, Any]] = []

    def summed() -> bool:
        statuses.append(httpx.get(running.url + "/v1/status", timeout=10).json())
        return bool(statuses[-1]["jobs"][0]["requests"] == asked)

    wait_until(summed, timeout=5)
    assert statuses[-1]["started"] < started
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


def test_with_a_logfile_the_workers_lines_and_access_lines_go_there_too(
    tmp_path: Path, origin: Origin, redis: RedisServer
) -> None:
    """The parent relays its workers' lines to its --logfile: none goes to standard output."""
    (tmp_path / "refresherd.toml").write_text(
        "[server]\naccess_log = true\n" + CONFIG.format(origin=origin.url)
    )
    log = tmp_path / "refresherd.log"
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "refresherd", "--config"]
        + [str(tmp_path / "refresherd.toml"), "--workers", "2", "--store", redis.url()]
        + ["--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": ROOT},
    )
    running = Running(process)
    try:

        def text() -> str:
            return log.read_text() if log.exists() else ""

        wait_until(lambda: len(SERVING.findall(text())) == 2 or process.poll() is not None, 30)
        assert len(SERVING.findall(text())) == 2, text()
        running.lines = [text()]  # (the workers' pids, for kill() if something fails)
        port = next(int(m[3]) for m in LISTENING.finditer(text()) if m[1] == "public")
        for n in range(6):
            answer = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/pid?n={n}", timeout=10)
            assert answer.status_code == 200, answer.text
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        kill(running)
    assert process.returncode == 0, text()
    assert stdout == ""
    written = text()
    access = re.findall(
        r"\[worker (\d) refresherd\.access#info\] GET /v1/jobs/\{job\} 200", written
    )
    assert len(access) == 6, written
    for n in (1, 2):
        assert f"refresherd: worker {n} (pid " in written
        assert re.search(
            rf"\[worker {n} [^]]*\] refresherd: worker {n} \(pid \d+\) serving", written
        )
    assert "Traceback" not in written


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
        kill(running)


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
        kill(running)


def hot_keys(url: str) -> dict[str, Any]:
    response = httpx.get(url + "/v1/hot", timeout=10)
    assert response.status_code == 200, response.text
    jobs: dict[str, Any] = response.json()["jobs"]
    return jobs


def test_the_parent_shows_the_hot_keys_of_every_worker_merged(
    service: Callable[..., Running], tmp_path: Path
) -> None:
    """
    Each worker writes its sketches to the metrics directory within a second;
    the parent's GET /v1/hot and refresherd_hot_keys merge every file there (a
    third one, as a third worker would write it, stands for what workers saw).
    """
    running = service()
    assert hot_keys(running.admin_url) == {"pid": [], "slow": []}
    (directory,) = tmp_path.glob("refresherd-metrics-*")
    wait_until(
        lambda: {p.name for p in directory.glob("hot-*.json")} == {"hot-1.json", "hot-2.json"},
        timeout=FLUSH_INTERVAL + 2.0,
    )
    seen = HotKeysRegistry()
    for n in ("1", "1", "2"):
        seen.observe("pid", f"rfd:pid:v1:n={n}", {"n": n}, time.time())
    (directory / "hot-9.json").write_text(json.dumps(seen.export()))
    shown = hot_keys(running.admin_url)
    assert [(hot["key"], hot["args"]) for hot in shown["pid"]] == [
        ("rfd:pid:v1:n=1", {"n": "1"}),
        ("rfd:pid:v1:n=2", {"n": "2"}),
    ]
    assert shown["slow"] == []
    one = httpx.get(running.admin_url + "/v1/hot?job=pid&n=1", timeout=10).json()
    assert [hot["key"] for hot in one["jobs"]["pid"]] == ["rfd:pid:v1:n=1"]
    text = httpx.get(running.admin_url + "/metrics", timeout=10).text
    assert metric(text, 'refresherd_hot_keys{job="pid"}') == 2
    assert metric(text, 'refresherd_hot_keys{job="slow"}') == 0
    assert running.stop() == 0, running.output()


def test_what_the_workers_did_reaches_the_parents_hot_keys_and_status_within_a_second(
    service: Callable[..., Running],
) -> None:
    running = service()
    before = time.time()
    seen, asked = ask_until_both_answer(running.url)  # each n once: a miss and its fetch
    assert len(seen) == 2
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            assert client.get(running.url + "/v1/jobs/pid?n=0").status_code == 200

    def shown() -> bool:
        keys = hot_keys(running.admin_url)["pid"]
        return bool(keys) and keys[0]["key"] == "rfd:pid:v1:n=0"

    wait_until(shown, timeout=FLUSH_INTERVAL + 2.0)

    statuses: list[Any] = []

    def counted() -> bool:
        response = httpx.get(running.admin_url + "/v1/status", timeout=10)
        assert response.status_code == 200, response.text
        statuses.append(response.json())
        return bool(statuses[-1]["totals"]["requests"] == asked + 20)

    wait_until(counted, timeout=FLUSH_INTERVAL + 2.0)
    status = statuses[-1]
    assert status["started"] < before
    assert status["store"] == {"kind": "redis", "ready": True, "bytes": None, "entries": None}
    pid, slow = status["jobs"]
    assert (pid["name"], pid["requests"], pid["fetches"]) == ("pid", asked + 20, asked)
    assert pid["answers"]["hit"] == round(20 / (asked + 20), 6)
    assert pid["fetch_p50_seconds"] is not None
    assert (pid["failed_fetches"], pid["in_flight"], pid["last_errors"]) == (0, 0, [])
    assert (slow["name"], slow["requests"]) == ("slow", 0)
