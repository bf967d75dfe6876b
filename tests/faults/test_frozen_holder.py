"""
A frozen lease holder: two processes on one Redis; the one holding a key's
lease is stopped (SIGSTOP) while its fetch is in flight.  Requests for the
key on the other process wait, take over once the lease has expired, and get
a value within their C{wait_timeout}; nothing else there waits meanwhile.
When the holder thaws, it answers its own caller, leaves no lease behind,
and serves the value the other process wrote.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.fleet import LEASE, STORE_DEADLINE, Fleet, lease_key, leases, no_lease_left
from tests.harness import wait_until
from tests.load import Load, kind, late, not_answered, wrong_values
from tests.redis_server import RedisServer

MARGIN = 2.0
"""Past the lease's expiry: a poll of the store (0.5 s at most), a fetch, the answer."""
WAIT_TIMEOUT = LEASE + MARGIN + 2
"""Long enough for a waiter to take over and fetch."""
DEADLINE = WAIT_TIMEOUT + STORE_DEADLINE + 1
WAITERS = 3


def test_a_waiter_takes_over_from_a_frozen_lease_holder(fleet: Fleet, redis: RedisServer) -> None:
    wait = f"{WAIT_TIMEOUT}s"
    holder = fleet.start(redis.url(), prefix="/a", fresh="1m", wait_timeout=wait)
    other = fleet.start(redis.url(), prefix="/b", fresh="1m", wait_timeout=wait)
    fleet.serve(["frozen"], prefix="/a", delay=3600)  # the holder's fetch never ends
    fleet.serve(["frozen"], prefix="/b", delay=0.05)
    others = ["o1", "o2"]
    fleet.serve(others, prefix="/b", delay=0.05)
    path = "/v1/jobs/item?k=frozen"

    with ThreadPoolExecutor(WAITERS + 1) as pool, httpx.Client(timeout=DEADLINE + 5) as client:

        def ask(url: str) -> tuple[float, float, httpx.Response]:
            """When the request was sent, when its answer came, and the answer."""
            sent = time.monotonic()
            response = client.get(url + path)
            return sent, time.monotonic(), response

        held = pool.submit(ask, holder.url)
        wait_until(lambda: fleet.origin.count("/a/items/frozen") == 1)
        assert leases(redis) == [lease_key("frozen")]
        holder.process.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        with Load([other.url], others, clients=2, deadline=DEADLINE) as load:
            time.sleep(0.2)
            waiting = [pool.submit(ask, other.url) for _ in range(WAITERS)]
            answers = [future.result(DEADLINE + 5) for future in waiting]
        holder.process.send_signal(signal.SIGCONT)
        _, _, held_answer = held.result(DEADLINE + 5)

    for sent, came, answer in answers:
        took, at = came - sent, came - frozen
        what = f"{answer.status_code} {answer.text} after {took:.2f}s, {at:.2f}s after the freeze"
        print(what)
        assert answer.status_code == 200, what
        assert answer.json()["value"] in fleet.produced("frozen")
        assert took <= WAIT_TIMEOUT, what
        assert at <= LEASE + MARGIN, what
    assert fleet.origin.count("/b/items/frozen") == 1  # one takeover for every waiter
    # The other keys were served as usual meanwhile.
    outcomes = load.results()
    assert wrong_values(outcomes, fleet.produced) == []
    assert late(outcomes, DEADLINE) == []
    assert not_answered(outcomes) == []
    # The holder, thawed, answers its caller, leaves no lease, and serves the new value.
    allowed = ("value", "error:fetch_failed", "error:wait_timeout")
    assert kind(held_answer.status_code, held_answer.json()) in allowed, held_answer.text
    no_lease_left(redis, within=STORE_DEADLINE + 1)
    again = holder.get(path).json()
    assert (again["status"], again["value"]) == ("hit", answers[0][2].json()["value"])
