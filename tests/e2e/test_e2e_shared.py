"""
End to end on a shared store: several C{twistd -n refresherd} processes share
one real redis-server or memcached, and a value is still fetched once however
many of them are asked.  Every test runs on both stores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from tests.harness import Origin, Service, start_service, wait_until
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

CONFIG = """
[auth]
write_tokens = ["w-token"]

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "{fresh}"
stale = "1h"
wait_timeout = "{wait_timeout}"
timeout = "10s"
early_refresh = 0
writable = true
"""


class Cluster(Protocol):
    """Start C{count} refresherd processes on the shared store, with job C{user} so set."""

    def __call__(
        self, count: int = 2, fresh: str = "1m", wait_timeout: str = "10s"
    ) -> list[Service]: ...


@pytest.fixture
def cluster(
    tmp_path: Path, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> Iterator[Cluster]:
    """Start refresherd processes on the shared store."""
    started: list[Service] = []

    def start(count: int = 2, fresh: str = "1m", wait_timeout: str = "10s") -> list[Service]:
        config = tmp_path / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin.url, fresh=fresh, wait_timeout=wait_timeout))
        for _ in range(count):
            started.append(start_service(config, "--store", shared_store.url()))
        return started[-count:]

    yield start
    for service in started:
        service.stop()


def stampede(services: list[Service], path: str, clients: int = 200) -> list[httpx.Response]:
    """C{clients} requests at once, on as many connections, spread over C{services}."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(timeout=30, limits=limits) as client, ThreadPoolExecutor(clients) as pool:
        return list(
            pool.map(lambda i: client.get(services[i % len(services)].url + path), range(clients))
        )


def test_a_stampede_across_two_processes_makes_one_origin_request(
    cluster: Cluster, origin: Origin
) -> None:
    services = cluster()
    origin.set("/users/hot", delay=1.0, body=b'{"fetch": {n}}')
    answers = stampede(services, "/v1/jobs/user?name=hot")
    assert {r.status_code for r in answers} == {200}
    assert {r.json()["value"]["fetch"] for r in answers} == {1}
    assert origin.count("/users/hot") == 1
    coalesced = sum(
        float(line.split()[-1])
        for service in services
        for line in httpx.get(service.admin_url + "/metrics").text.splitlines()
        if line.startswith('refresherd_coalesced_total{job="user"}')
    )
    misses = [r for r in answers if r.json()["status"] == "miss"]
    assert coalesced == len(misses) - 1  # every miss but the one that fetched joined it


def test_a_stale_key_asked_through_two_processes_is_refreshed_once(
    cluster: Cluster, origin: Origin
) -> None:
    # Fresh for 3 s: the refreshed value stays fresh until the stampede is over.
    services = cluster(fresh="3s")
    origin.set("/users/bob", delay=0.5, body=b'{"fetch": {n}}')
    assert services[0].get("/v1/jobs/user?name=bob").json()["status"] == "miss"
    time.sleep(3.1)
    answers = stampede(services, "/v1/jobs/user?name=bob")
    statuses = [r.json()["status"] for r in answers]
    assert set(statuses) <= {"stale", "hit"} and "stale" in statuses  # nobody waited
    wait_until(lambda: origin.count("/users/bob") == 2)
    time.sleep(0.5)
    assert origin.count("/users/bob") == 2
    for service in services:  # both serve the one refreshed value, fresh
        answer = service.get("/v1/jobs/user?name=bob").json()
        assert (answer["status"], answer["value"]) == ("hit", {"fetch": 2})


def test_a_put_through_one_process_fences_a_fetch_running_in_the_other(
    cluster: Cluster, origin: Origin
) -> None:
    one, two = cluster()
    origin.set("/users/ann", delay=1.5, body=b'"from the origin"')
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(one.get, "/v1/jobs/user?name=ann")
        wait_until(lambda: origin.count("/users/ann") == 1)
        put = httpx.put(
            two.url + "/v1/jobs/user?name=ann",
            content=b'"put"',
            headers={"Authorization": "Bearer w-token", "Content-Type": "application/json"},
        )
        assert put.status_code == 200, put.text
        answer = waiting.result(timeout=30)
    assert answer.json()["value"] == "put"
    for service in (one, two):
        assert service.get("/v1/jobs/user?name=ann").json()["value"] == "put"


def test_store_down_and_back_no_hang_and_readyz_flips(
    cluster: Cluster, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> None:
    (service,) = cluster(count=1, wait_timeout="3s")
    assert service.get("/readyz").status_code == 200
    shared_store.kill()
    try:
        wait_until(lambda: service.get("/readyz").status_code == 503, timeout=10)
        for i in range(10):
            start = time.monotonic()
            response = service.get(f"/v1/jobs/user?name=down{i}")
            assert time.monotonic() - start < 3.5
            assert response.status_code == 200
            assert response.json()["status"] == "miss"
            assert response.headers["cache-status"] == "refresherd; fwd=miss"
        put = httpx.put(
            service.url + "/v1/jobs/user?name=x",
            content=b"1",
            headers={"Authorization": "Bearer w-token"},
            timeout=10,
        )
        assert (put.status_code, put.json()["error"]["code"]) == (503, "store_unavailable")
    finally:
        shared_store.start()
    wait_until(lambda: service.get("/readyz").status_code == 200, timeout=15)
    assert service.get("/v1/jobs/user?name=back").json()["status"] == "miss"
    assert service.get("/v1/jobs/user?name=back").json()["status"] == "hit"


def test_values_fetched_during_an_outage_are_kept_in_the_process_until_the_store_is_back(
    cluster: Cluster, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> None:
    """An outage does not make every request an origin fetch; the store's return drops them."""
    (service,) = cluster(count=1, wait_timeout="3s")
    shared_store.kill()
    try:
        wait_until(lambda: service.get("/readyz").status_code == 503, timeout=10)
        statuses = [service.get("/v1/jobs/user?name=out").json()["status"] for _ in range(5)]
        assert statuses == ["miss", "hit", "hit", "hit", "hit"]
        assert origin.count("/users/out") == 1
    finally:
        shared_store.start()
    wait_until(lambda: service.get("/readyz").status_code == 200, timeout=15)
    answer = service.get("/v1/jobs/user?name=out").json()
    assert answer["status"] == "miss"  # read from the store again, where it never was
    assert origin.count("/users/out") == 2
