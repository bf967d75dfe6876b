"""
Redis fails under load: killed and restarted, frozen (SIGSTOP) and thawed,
silenced by a paused proxy whose connections are then cut, or carrying out a
lease whose answer the proxy drops.  What the
clients see: never a value the origin did not send for that key, every
request answered with a value within its deadline (while Redis cannot be
reached a key is fetched here and not stored), soon after the fault ends a
value fetched since then served from Redis for every key, and no lease
left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from refresherd.core.policy import lease_ttl
from tests.fleet import STORE_DEADLINE, Fleet, entry_key, leases, no_lease_left, recovery
from tests.harness import wait_until
from tests.load import Load, late, not_answered, tally, wrong_values
from tests.redis_server import RedisServer
from tests.tcp_proxy import TcpProxy

KEYS = [f"k{i}" for i in range(6)]
WAIT_TIMEOUT = 3.0
DEADLINE = WAIT_TIMEOUT + 2 * STORE_DEADLINE + 1
"""A lookup reads Redis (at most twice, with the near cache) and waits for its fetch."""
OUTAGE = 3.0
"""Seconds the fault lasts: longer than a store call's deadline, and than the stale window."""
RECOVERY = 4.0
"""
Seconds after the fault ends by which every key is fresh from Redis again:
reconnecting takes about a second, a refresh a fraction of one.
"""
TIMEOUT = 3.0
LEASE = lease_ttl(TIMEOUT, 0)
# A lease taken as the fault begins outlives it by longer than a wait and than
# the recovery: one left behind cannot pass unseen.
assert LEASE - OUTAGE > max(WAIT_TIMEOUT, RECOVERY) + 0.5


@pytest.fixture
def proxy(redis: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy((redis.host, redis.port)) as proxy:
        yield proxy


def run_fault(
    fleet: Fleet, redis: RedisServer, store: str, fault: Callable[[], None], end: Callable[[], None]
) -> None:
    fleet.serve(KEYS, delay=0.1)
    service = fleet.start(
        store, fresh="500ms", stale="2s", wait_timeout=f"{WAIT_TIMEOUT}s", timeout=TIMEOUT
    )
    with Load([service.url], KEYS, clients=4, deadline=DEADLINE) as load:
        # Steady: values fetched, served fresh, served stale while refreshed.
        wait_until(lambda: load.served() == {"miss", "hit", "stale"}, timeout=10)
        assert all(redis.command("EXISTS", entry_key(key)) for key in KEYS)
        began = load.now()
        fleet.when_fetching(fault)
        time.sleep(OUTAGE)
        end()
        ended = load.now()
        left = {key: redis.command("PTTL", key) for key in leases(redis)}
        recovered, behind = recovery(fleet, load, KEYS, RECOVERY)
        after_recovery = leases(redis)
    outcomes = load.results()
    print(f"{len(outcomes)} requests: {dict(tally(outcomes))}; recovered in {recovered}s")
    assert wrong_values(outcomes, fleet.produced) == []
    assert late(outcomes, DEADLINE) == []
    assert not_answered(outcomes) == [], f"leases as the fault ended (ms to live): {left}"
    # The fault was felt: values fetched and answered, but not stored.
    assert any(o.status_of_value == "miss" and not o.stored for o in load.results(began, ended))
    assert recovered is not None, f"not fresh from Redis again: {behind}; leases {after_recovery}"
    no_lease_left(redis)  # the load has stopped: its last fetches end at once
    assert load.now() - ended < LEASE  # a lease left during the fault would still be there


def test_redis_killed_under_load_and_restarted(fleet: Fleet, redis: RedisServer) -> None:
    run_fault(fleet, redis, redis.url(), redis.kill, redis.start)


def test_redis_frozen_under_load_and_thawed(fleet: Fleet, redis: RedisServer) -> None:
    run_fault(fleet, redis, redis.url(), redis.pause, redis.resume)


def test_redis_silenced_by_a_paused_proxy_then_cut(
    fleet: Fleet, redis: RedisServer, proxy: TcpProxy
) -> None:
    def end() -> None:
        proxy.cut()
        proxy.resume()

    run_fault(fleet, redis, f"redis://{proxy.address}/0", proxy.pause, end)


def test_redis_took_a_lease_whose_answer_was_lost(
    fleet: Fleet, redis: RedisServer, proxy: TcpProxy
) -> None:
    """
    Redis carries out a lease's C{SET ... NX} but its answer never comes back
    (nor any after it) and the connection is cut at once: the flight fetches
    without storing, and the lease it was never told of is released as soon as
    Redis answers again, rather than blocking its key for its lifetime (LEASE
    seconds, longer than a wait) with nobody fetching it.
    """
    fleet.serve(KEYS, delay=0.1)
    service = fleet.start(
        f"redis://{proxy.address}/0",
        fresh="500ms",
        stale="2s",
        wait_timeout=f"{WAIT_TIMEOUT}s",
        timeout=TIMEOUT,
    )
    with Load([service.url], KEYS, clients=4, deadline=DEADLINE) as load:
        wait_until(lambda: load.served() == {"miss", "hit", "stale"}, timeout=10)
        began = load.now()
        proxy.lose_answers_after(b"$2\r\nNX\r\n")
        wait_until(lambda: proxy.lost > 0, timeout=10, interval=0.002)
        taken = leases(redis)
        proxy.cut()
        proxy.answer()
        ended = load.now()
        recovered, behind = recovery(fleet, load, KEYS, RECOVERY)
        after_recovery = leases(redis)
    outcomes = load.results()
    print(f"{len(outcomes)} requests: {dict(tally(outcomes))}; recovered in {recovered}s")
    assert taken  # Redis holds the lease whose answer was lost
    assert wrong_values(outcomes, fleet.produced) == []
    assert late(outcomes, DEADLINE) == []
    assert not_answered(outcomes) == [], f"leases as the answers were lost: {taken}"
    assert any(o.status_of_value == "miss" and not o.stored for o in load.results(began))
    assert recovered is not None, f"not fresh from Redis again: {behind}; leases {after_recovery}"
    no_lease_left(redis)
    assert load.now() - ended < LEASE  # the lost lease would still be there
