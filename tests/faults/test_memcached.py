"""
A memcached server lost from a pool of two (SIGKILL) under load.  What the
clients see: never a value the origin did not send for that key, every
request answered with a value within its deadline (the keys of the lost
server read as absent, are fetched and written to the other), soon after the
loss a value fetched since then served from the pool for every key, and no
lease left behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from refresherd.stores.memcached.ring import Ring
from tests.fleet import STORE_DEADLINE, Fleet, entry_key, lease_key
from tests.harness import wait_until
from tests.load import Load, late, not_answered, tally, wrong_values
from tests.memcached_server import MemcachedServer, running_pool

WAIT_TIMEOUT = 3.0
DEADLINE = WAIT_TIMEOUT + STORE_DEADLINE + 1
"""A lookup reads the pool (one call) and waits for its fetch."""
RECOVERY = 4.0
"""Seconds after the loss by which every key is fresh from the pool again."""


@pytest.fixture
def pool() -> Iterator[list[MemcachedServer]]:
    with running_pool(2) as servers:
        yield servers


def placed(pool: list[MemcachedServer], per_server: int) -> list[str]:
    """Keys of which C{per_server} live on each server (docs/memcached.md's ring)."""
    ring = Ring([(server.address, server) for server in pool])
    keys: dict[MemcachedServer, list[str]] = {server: [] for server in pool}
    for i in range(1000):
        key = f"k{i}"
        found = keys[next(ring.walk(entry_key(key).encode()))]
        if len(found) < per_server:
            found.append(key)
    return [key for found in keys.values() for key in found]


def test_a_memcached_server_lost_from_a_pool_of_two_under_load(
    fleet: Fleet, pool: list[MemcachedServer]
) -> None:
    keys = placed(pool, 3)
    victim, survivor = pool
    fleet.serve(keys, delay=0.1)
    store = "memcached://" + ",".join(server.address for server in pool)
    service = fleet.start(store, fresh="500ms", stale="2s", wait_timeout=f"{WAIT_TIMEOUT}s")
    with Load([service.url], keys, clients=4, deadline=DEADLINE) as load:
        wait_until(lambda: load.served() == {"miss", "hit", "stale"}, timeout=10)
        assert all(server.stats()["curr_items"] != "0" for server in pool)
        fleet.when_fetching(victim.kill)
        lost = load.now()
        floor = {key: fleet.newest(key) for key in keys}

        def fresh_again() -> set[str]:
            return {
                o.key
                for o in load.results(lost)
                if o.status_of_value == "hit" and o.body["value"]["n"] > floor[o.key]
            }

        limit = time.monotonic() + RECOVERY
        while fresh_again() != set(keys) and time.monotonic() < limit:
            time.sleep(0.05)
        recovered = load.now() - lost
        load.wait_for(100, since=load.now())  # and the pool of one goes on serving
    outcomes = load.results()
    print(f"{len(outcomes)} requests: {dict(tally(outcomes))}; recovered in {recovered:.2f}s")
    assert wrong_values(outcomes, fleet.produced) == []
    assert late(outcomes, DEADLINE) == []
    assert not_answered(outcomes) == []
    assert fresh_again() == set(keys), f"not fresh from the pool {RECOVERY}s after the loss"
    # Every key now lives on the survivor, and no lease is left there.
    assert all(survivor.get(entry_key(key).encode()) is not None for key in keys)
    wait_until(lambda: [k for k in keys if survivor.get(lease_key(k).encode())] == [], timeout=1)
