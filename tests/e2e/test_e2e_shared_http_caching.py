"""
End to end on a shared store (each test on redis-server and on memcached):
an origin's caching headers (docs/http-caching.md) across two
C{twistd -n refresherd} processes: its Surrogate-Key tags purged through the
other process, a no-store answer that lets the other process's waiters fetch
for themselves, and a 304 renewal that the other process reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.harness import Origin, Service, start_service, wait_until
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

CONFIG = """
[jobs.page]
args = ["name"]
url = "{origin}/pages/{{name}}"
freshness = "origin"
fresh = "1m"
stale = "1h"
min_refresh = "0.1s"
wait_timeout = "10s"
timeout = "5s"
early_refresh = 0
"""


@pytest.fixture
def pair(
    tmp_path: Path, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> Iterator[list[Service]]:
    config = tmp_path / "refresherd.toml"
    config.write_text(CONFIG.format(origin=origin.url))
    started = [start_service(config, "--store", shared_store.url()) for _ in range(2)]
    yield started
    for service in started:
        service.stop()


def get(service: Service, name: str) -> httpx.Response:
    response = service.get(f"/v1/jobs/page?name={name}")
    assert response.status_code == 200, response.text
    return response


def fetched_at(service: Service, name: str) -> float:
    key = quote(f"rfd:page:v1:name={name}", safe="")
    response = httpx.get(f"{service.admin_url}/v1/entries/{key}", timeout=10)
    assert response.status_code == 200, response.text
    return float(response.json()["fetched_at"])


def test_origin_tags_are_purged_through_the_other_process(
    pair: list[Service], origin: Origin
) -> None:
    one, other = pair
    origin.set("/pages/shoe", body=b'{"fetch": {n}}', headers={"Surrogate-Key": "sale"})
    assert get(one, "shoe").json()["status"] == "miss"
    assert get(other, "shoe").json()["status"] == "hit"
    purged = httpx.post(f"{other.admin_url}/v1/purge", json={"tags": ["sale"]}, timeout=10)
    assert purged.json() == {"purged": 1}
    again = get(one, "shoe")
    assert (again.json()["status"], again.json()["value"]) == ("miss", {"fetch": 2})


def test_a_no_store_answer_frees_the_other_processs_waiters_to_fetch_for_themselves(
    pair: list[Service], origin: Origin
) -> None:
    origin.set(
        "/pages/me", body=b'{"fetch": {n}}', delay=1.0, headers={"Cache-Control": "no-store"}
    )
    started = time.monotonic()
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(lambda i: client.get(pair[i % 2].url + "/v1/jobs/page?name=me"), range(20))
        )
    took = time.monotonic() - started
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["status"] for a in answers} == {"miss"}
    assert {a.headers["cache-status"] for a in answers} == {"refresherd; fwd=miss"}
    # One fetch per process: the second waits for the first (1 s), then for its own (1 s),
    # not for its wait_timeout (10 s).
    assert origin.count("/pages/me") == 2
    assert took < 5, took


def test_a_304_renewal_in_one_process_is_read_by_the_other(
    pair: list[Service], origin: Origin
) -> None:
    one, other = pair
    origin.set(
        "/pages/doc",
        body=b"x" * 300_000,  # several memcached chunks when the item limit is small
        content_type="text/plain",
        headers={"ETag": '"v1"', "Cache-Control": "max-age=1"},
        not_modified=True,
    )
    get(one, "doc")
    first = fetched_at(other, "doc")
    time.sleep(1.05)
    # The 304 renews the entry for a minute: fresh when the other process reads it, however
    # slow the machine.
    origin.set("/pages/doc", headers={"ETag": '"v1"', "Cache-Control": "max-age=60"})
    assert get(one, "doc").json()["status"] == "stale"
    wait_until(lambda: fetched_at(other, "doc") > first)
    renewed = get(other, "doc")
    assert renewed.json()["status"] == "hit"
    assert renewed.json()["value"] == "x" * 300_000
    assert origin.conditions["/pages/doc"] == [None, '"v1"']
    assert len(origin.bodies("/pages/doc")) == 1


def test_a_stale_tagged_value_asked_through_both_processes_is_refreshed_once(
    pair: list[Service], origin: Origin
) -> None:
    origin.set(
        "/pages/hot",
        body=b'{"fetch": {n}}',
        delay=0.3,
        headers={"Surrogate-Key": "sale", "Cache-Control": "max-age=1"},
    )
    get(pair[0], "hot")
    get(pair[1], "hot")
    time.sleep(1.05)
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(lambda i: client.get(pair[i % 2].url + "/v1/jobs/page?name=hot"), range(40))
        )
    assert {a.json()["status"] for a in answers} <= {"stale", "hit"}
    wait_until(lambda: all(get(s, "hot").json()["value"] == {"fetch": 2} for s in pair))
    time.sleep(0.5)  # a second refresh, were there one, would reach the origin by now
    assert origin.count("/pages/hot") == 2
