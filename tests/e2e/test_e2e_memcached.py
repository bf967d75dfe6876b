"""
End to end on memcached alone: C{twistd -n refresherd} processes on a pool of
real memcached servers, one of which dies under load, and values larger than
memcached's item limit carried whole from one process to another, and
renewed (a 304) by writing only their manifest.  What both
shared stores do alike is in C{test_e2e_shared}.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from refresherd.keys import entry_key
from refresherd.stores.memcached.layout import parse_manifest
from refresherd.stores.memcached.ring import Ring
from tests.harness import Origin, Service, start_service, wait_until
from tests.memcached_server import MemcachedServer, running_pool

CONFIG = """
[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
wait_timeout = "3s"
timeout = "2s"
early_refresh = 0

[jobs.blob]
args = ["name"]
url = "{origin}/blobs/{{name}}"
fresh = "1h"
wait_timeout = "10s"
early_refresh = 0

[jobs.doc]
args = ["name"]
url = "{origin}/docs/{{name}}"
freshness = "origin"
fresh = "1m"
stale = "1h"
min_refresh = "0.1s"
wait_timeout = "10s"
timeout = "5s"
early_refresh = 0
"""


@pytest.fixture
def pool() -> Iterator[list[MemcachedServer]]:
    with running_pool(3) as servers:
        yield servers


class Start(Protocol):
    """Start C{count} refresherd processes on the memcached servers given."""

    def __call__(self, servers: list[MemcachedServer], count: int = 2) -> list[Service]: ...


@pytest.fixture
def start(tmp_path: Path, origin: Origin) -> Iterator[Start]:
    """Start refresherd processes on the memcached servers given."""
    started: list[Service] = []

    def run(servers: list[MemcachedServer], count: int = 2) -> list[Service]:
        config = tmp_path / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin.url))
        url = "memcached://" + ",".join(server.address for server in servers)
        for _ in range(count):
            started.append(start_service(config, "--store", url))
        return started[-count:]

    yield run
    for service in started:
        service.stop()


def server_of(name: str, servers: list[MemcachedServer]) -> MemcachedServer:
    """The server the ring gives the key of user C{name}, as docs/memcached.md computes it."""
    key = entry_key("rfd", "user", 1, {"name": name})
    return Ring([(server.address, server) for server in servers]).server(key.encode())


def test_a_pool_keeps_answering_while_one_server_is_killed(
    start: Start, pool: list[MemcachedServer], origin: Origin
) -> None:
    """
    Two processes on three servers, asked in turn for 40 keys, three rounds:
    one server is killed after the first round.  Every request is answered
    (never a 504 or a 503); the keys on the servers left are never fetched
    again, those of the dead one once more each, and after that both
    processes find them on the same next server.
    """
    one, two = start(pool)
    names = [f"u{i}" for i in range(40)]
    for name in names:
        origin.set(f"/users/{name}", body=b'{"fetch": {n}}')
    victim = pool[1]
    moved = [name for name in names if server_of(name, pool) is victim]
    assert 4 <= len(moved) <= 30  # the ring spreads them; the test means something

    with httpx.Client(timeout=30) as client:

        def get(service: Service, name: str) -> httpx.Response:
            return client.get(f"{service.url}/v1/jobs/user?name={name}")

        for name in names:
            answer = get(one, name)
            assert (answer.status_code, answer.json()["status"]) == (200, "miss"), answer.text
        for name in names:
            answer = get(two, name)
            assert (answer.status_code, answer.json()["status"]) == (200, "hit"), answer.text

        victim.kill()
        for round_ in range(2):
            for name in names:
                for service in (one, two):
                    answer = get(service, name)
                    assert answer.status_code == 200, (round_, name, answer.text)

        for name in names:
            assert origin.count(f"/users/{name}") == (2 if name in moved else 1), name
        for name in moved:  # written again, on a server both processes use
            for service in (one, two):
                answer = get(service, name).json()
                assert (answer["status"], answer["value"]) == ("hit", {"fetch": 2}), name
    assert one.get("/readyz").status_code == 200


def test_a_5_mib_value_fetched_by_one_process_is_read_whole_by_another(
    start: Start, origin: Origin
) -> None:
    """
    A value five times memcached's item limit, fetched through one process,
    is stored in chunks and read back byte for byte through the other.
    """
    server = MemcachedServer()
    server.start()
    try:
        one, two = start([server])
        body = os.urandom(5 * 1024 * 1024).replace(b"{n}", b"{m}")
        origin.set("/blobs/big", body=body, content_type="application/octet-stream")
        first = one.get("/v1/jobs/blob/raw?name=big")
        assert first.status_code == 200
        assert first.headers["cache-status"] == "refresherd; fwd=miss; stored"
        second = two.get("/v1/jobs/blob/raw?name=big")
        assert second.status_code == 200
        assert second.headers["cache-status"].startswith("refresherd; hit;")
        assert hashlib.sha256(second.content).digest() == hashlib.sha256(body).digest()
        assert second.headers["etag"] == first.headers["etag"]
        assert origin.count("/blobs/big") == 1
        raw = server.get(entry_key("rfd", "blob", 1, {"name": "big"}).encode())
        assert raw is not None and raw.startswith(b"manifest 2 ")
    finally:
        server.cleanup()


def test_a_304_renewal_of_a_value_in_chunks_writes_only_its_manifest(
    start: Start, origin: Origin
) -> None:
    """
    A 5 MiB value with an ETag, stale after a second: its refresh is answered
    304, and the renewal that lands keeps the chunks (same generation, a few
    KB sent to memcached); the other process reads it whole, renewed.
    """
    server = MemcachedServer()
    server.start()
    try:
        one, two = start([server])
        body = os.urandom(5 * 1024 * 1024).replace(b"{n}", b"{m}")
        origin.set(
            "/docs/big",
            body=body,
            content_type="application/octet-stream",
            headers={"ETag": '"v1"', "Cache-Control": "max-age=1"},
            not_modified=True,
        )
        key = entry_key("rfd", "doc", 1, {"name": "big"})

        def manifest() -> tuple[str, bytes]:
            found = parse_manifest(server.get(key.encode()) or b"", 64 * 1024 * 1024)
            return found.generation, found.metadata

        assert one.get("/v1/jobs/doc/raw?name=big").status_code == 200
        generation, metadata = manifest()
        sent = int(server.stats()["bytes_read"])
        time.sleep(1.05)
        stale = one.get("/v1/jobs/doc/raw?name=big")  # starts the refresh, answered 304
        assert stale.headers["cache-status"] == "refresherd; hit; ttl=-1"
        wait_until(lambda: manifest()[1] != metadata)
        assert manifest()[0] == generation
        assert int(server.stats()["bytes_read"]) - sent < 64 * 1024
        assert origin.conditions["/docs/big"] == [None, '"v1"']
        renewed = two.get("/v1/jobs/doc/raw?name=big")
        assert renewed.headers["cache-status"].startswith("refresherd; hit;")
        assert hashlib.sha256(renewed.content).digest() == hashlib.sha256(body).digest()
    finally:
        server.cleanup()
