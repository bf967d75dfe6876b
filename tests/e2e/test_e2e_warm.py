"""
Warm lists, the warm endpoint and C{refresherctl warm}, end to end: two
C{twistd -n refresherd} processes on one real redis-server keep a warm list
ready (each key fetched once per refresh across both, values hits with no
request ever missing), and the endpoint and the command answer fresh, done
and failed as the origin and the arguments say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Origin, Service, start_service, wait_until
from tests.redis_server import RedisServer

CONFIG = """
[jobs.user]
args = ["name"]
arg_patterns = {{ name = "[a-z]+" }}
url = "{origin}/users/{{name}}"
fresh = "{fresh}"
stale = "1h"
error_ttl = "{error_ttl}"
early_refresh = 0
timeout = "5s"
warm = [{{name = "bob"}}]
warm_file = "warm.jsonl"
"""
WARM_FILE = '# kept ready\n{"name": "ann"}\n'
REFRESHERCTL = str(Path(sys.executable).with_name("refresherctl"))


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def start(
    tmp_path: Path, origin: Origin, redis: RedisServer, count: int, **settings: str
) -> list[Service]:
    """C{count} processes on one Redis, job C{user} with bob and ann to warm."""
    redis.command("FLUSHALL")
    config = tmp_path / "refresherd.toml"
    config.write_text(CONFIG.format(origin=origin.url, **settings))
    (tmp_path / "warm.jsonl").write_text(WARM_FILE)
    origin.set("/users/bob", body=b'{"fetch": {n}}')
    return [start_service(config, "--store", redis.url()) for _ in range(count)]


@pytest.fixture
def pair(tmp_path: Path, origin: Origin, redis: RedisServer) -> Iterator[list[Service]]:
    """Two processes, the job fresh for 2 s."""
    services = start(tmp_path, origin, redis, 2, fresh="2s", error_ttl="5s")
    yield services
    for service in services:
        service.stop()


@pytest.fixture
def one(tmp_path: Path, origin: Origin, redis: RedisServer) -> Iterator[Service]:
    """One process, the job fresh for a minute, failures not remembered."""
    (service,) = start(tmp_path, origin, redis, 1, fresh="1m", error_ttl="0s")
    yield service
    service.stop()


class FetchTimes:
    """The times of an origin path's requests, seen by polling its count every 20 ms."""

    def __init__(self, origin: Origin, path: str) -> None:
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(origin, path), daemon=True)
        self._thread.start()

    def _poll(self, origin: Origin, path: str) -> None:
        seen = origin.count(path)
        while not self._stop.wait(0.02):
            count = origin.count(path)
            self.times += [time.monotonic()] * (count - seen)
            seen = count

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.times


def test_two_processes_keep_a_warm_list_ready_with_one_fetch_per_refresh(
    pair: list[Service], origin: Origin
) -> None:
    """
    fresh = 2 s with a fast origin: each key is refreshed 1 s (the least
    lead) before it stops being fresh, so once a second (also min_refresh),
    by one of the two processes; every request is a hit, none ever missed.
    """
    wait_until(lambda: origin.count("/users/bob") >= 1 and origin.count("/users/ann") >= 1)
    times = FetchTimes(origin, "/users/bob")
    statuses: list[str] = []
    window = 5.0
    end = time.monotonic() + window
    while time.monotonic() < end:
        for service in pair:
            for name in ("bob", "ann"):
                statuses.append(service.get(f"/v1/jobs/user?name={name}").json()["status"])
        time.sleep(0.05)
    fetched = times.stop()
    gaps = [b - a for a, b in zip(fetched, fetched[1:], strict=False)]
    print(
        f"\nbob: {len(fetched)} origin requests in {window:g} s, gaps {[round(g, 2) for g in gaps]}"
    )
    assert set(statuses) == {"hit"}, statuses
    # One fetch a period (fresh - lead = 1 s): never two processes fetching one refresh.
    assert window - 2 <= len(fetched) <= window + 1
    assert min(gaps) > 0.8, gaps
    metrics = [httpx.get(s.admin_url + "/metrics").text for s in pair]
    warm = [
        float(line.split()[-1])
        for text in metrics
        for line in text.splitlines()
        if line.startswith('refresherd_refreshes_total{job="user",reason="warm"}')
    ]
    print(f"warm refreshes started by each process (bob and ann, since start-up): {warm}")
    assert sum(warm) >= len(fetched)  # both processes started refreshes: the lease kept one
    assert any("warming 2 key(s) of user" in s.output() for s in pair)


def warm(service: Service, *sets: object) -> httpx.Response:
    return httpx.post(
        service.admin_url + "/v1/jobs/user/warm",
        json={"args": list(sets)},
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def test_the_warm_endpoint_answers_fresh_done_and_failed(
    pair: list[Service], origin: Origin
) -> None:
    one, two = pair
    origin.set("/users/new", body=b'"new"')  # fresh for 2 s: time enough to ask the other
    wait_until(lambda: origin.count("/users/bob") >= 1)
    origin.set("/users/broken", status=503)
    response = warm(one, {"name": "new"}, {"name": "broken"}, {"name": "B"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "job": "user",
        "results": [
            {"key": "rfd:user:v1:name=new", "result": "done"},
            {
                "key": "rfd:user:v1:name=broken",
                "result": "failed",
                "code": "fetch_failed",
                "error": "origin answered 503",
            },
            {
                "key": None,
                "result": "failed",
                "code": "bad_args",
                "error": "argument 'name' does not match '[a-z]+'",
            },
        ],
    }
    assert origin.count("/users/new") == 1 and origin.count("/users/broken") == 1
    answer = two.get("/v1/jobs/user?name=new").json()  # stored: the other process hits it
    assert answer["status"] == "hit"
    # Asked again through the other process while it is fresh: nothing fetched.
    again = warm(two, {"name": "new"})
    assert again.json()["results"] == [{"key": "rfd:user:v1:name=new", "result": "fresh"}]
    assert origin.count("/users/new") == 1
    too_many = warm(one, *({"name": "x"} for _ in range(101)))
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (413, "batch_too_large")
    unknown = httpx.post(
        one.admin_url + "/v1/jobs/nope/warm",
        json={"args": [{}]},
        headers={"Content-Type": "application/json"},
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_job")


def refresherctl(service: Service, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHERD_")}
    env.update(REFRESHERD_ADMIN_URL=service.admin_url, REFRESHERD_URL=service.url)
    return subprocess.run(
        [REFRESHERCTL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def test_refresherctl_warm_runs_against_a_real_service_and_can_run_again(
    one: Service, origin: Origin, tmp_path: Path
) -> None:
    origin.set("/users/down", status=500)
    names = [f"u{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(150)]
    lines = "".join(json.dumps({"name": n}) + "\n" for n in [*names, "down"])
    path = tmp_path / "args.jsonl"
    path.write_text("# users\n\n" + lines)
    first = refresherctl(one, "warm", "user", "--file", str(path))
    assert first.returncode == 1, first.stderr
    assert first.stdout.splitlines() == [
        "100/151: 100 done, 0 already fresh, 0 not stored, 0 failed",
        "151/151: 150 done, 0 already fresh, 0 not stored, 1 failed",
        "150 done, 0 already fresh, 0 not stored, 1 failed",
        '  {"name": "down"}: fetch_failed: origin answered 500',
    ]
    origin.set("/users/down", status=200)
    again = refresherctl(one, "warm", "user", "--file", "-", stdin=path.read_text())
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == "1 done, 150 already fresh, 0 not stored, 0 failed"
    assert origin.count("/users/uaa") == 1  # what was fresh was not fetched again
    one_set = refresherctl(one, "warm", "user", "name=bob")  # warmed at start-up
    assert (one_set.returncode, one_set.stdout.splitlines()[-1]) == (
        0,
        "0 done, 1 already fresh, 0 not stored, 0 failed",
    )
