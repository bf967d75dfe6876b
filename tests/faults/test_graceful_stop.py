"""
SIGTERM under load, while clients keep sending requests on kept-alive
connections: a rolling restart (two processes on one Redis, one stopped)
and a single process stopped.

What the clients see: every request sent before the signal answered, a value
or a documented error object (503 C{overloaded} for a fetch cancelled by the
stop); a request sent after it answered so too, or refused (the listener is
closed) or closed with no answer (it met its connection closing: an HTTP/1.1
client sends it again elsewhere); never a wrong value, never past its
deadline.  The process exits 0 within its drain, and leaves no lease in
Redis: the other process serves every key with no error throughout.
"""

from __future__ import annotations

import signal
import time

from refresherd.core.policy import lease_ttl
from tests.fleet import STORE_DEADLINE, Fleet, leases, no_lease_left
from tests.harness import Service, wait_until
from tests.load import Load, Outcome, late, not_answered, tally, wrong_values
from tests.redis_server import RedisServer

KEYS = [f"k{i}" for i in range(100)]
WAIT_TIMEOUT = 2.0
TIMEOUT = 3.0
LEASE = lease_ttl(TIMEOUT, 0)
"""Long enough that a lease left behind is still there when the test looks."""
DEADLINE = WAIT_TIMEOUT + 2 * STORE_DEADLINE + 1
IN_FLIGHT = 0.1
"""Seconds before the signal in which a request may still be on its way to the process."""
CLOSED_UNANSWERED = "unanswered:RemoteProtocolError"
"""A connection closed with no answer to the request sent on it (httpx's name for it)."""
STOP = 25.0
"""
The drain (10 s, which a steady load on open connections uses whole), the
store operations it waits for (5 s) and the answers' 5 s to reach their
clients: about 20 s at most (docs/deploy.md).
"""


def start(fleet: Fleet, redis: RedisServer) -> Service:
    """A process whose values go stale quickly: many fetches, some started after the signal."""
    return fleet.start(
        redis.url(), fresh="200ms", stale="2s", wait_timeout=f"{WAIT_TIMEOUT}s", timeout=TIMEOUT
    )


def stop(service: Service, load: Load) -> tuple[float, float, int]:
    """SIGTERM to C{service} under C{load}: when it was sent, when it exited, its status."""
    load.wait_for(300)
    wait_until(lambda: load.served() == {"miss", "hit", "stale"}, timeout=10)
    signalled = load.now()
    service.process.send_signal(signal.SIGTERM)
    status = service.process.wait(STOP)
    return signalled, load.now(), status


def check_stopped(
    outcomes: list[Outcome], fleet: Fleet, signalled: float, exited: float, status: int
) -> None:
    """What the clients of the process stopped saw, and how it exited."""
    took = exited - signalled
    print(f"signalled at +{signalled:.2f}s, stopped in {took:.2f}s; {dict(tally(outcomes))}")
    assert status == 0
    assert wrong_values(outcomes, fleet.produced) == []
    assert late(outcomes, DEADLINE) == []
    # A request its client sent just before the signal may still be on its way when the
    # process closes the kept-alive connection it was sent on as idle: closed with no
    # answer, which an HTTP/1.1 client sends again elsewhere (RFC 9112 9.3.1).  Nothing
    # the process had received goes unanswered.
    before = [o for o in outcomes if o.sent < signalled - IN_FLIGHT]
    assert not_answered(before, ("value", "error:overloaded")) == []
    racing = [o for o in outcomes if signalled - IN_FLIGHT <= o.sent < signalled]
    assert not_answered(racing, ("value", "error:overloaded", CLOSED_UNANSWERED)) == []
    after = [o for o in outcomes if o.sent >= signalled]
    allowed = {"value", "error:overloaded"} | {o.kind for o in after if not o.answered}
    assert after and not_answered(after, allowed) == []


def test_a_rolling_restart_leaves_no_lease_and_no_error(fleet: Fleet, redis: RedisServer) -> None:
    """
    Two processes on one Redis, 20 clients on the first and 4 on the second;
    SIGTERM to the first.  The second goes on answering every key with a
    value, and Redis holds no lease afterwards.
    """
    fleet.serve(KEYS, delay=0.1)
    first, second = start(fleet, redis), start(fleet, redis)
    stopped = Load([first.url], KEYS, clients=20, deadline=DEADLINE)
    going_on = Load([second.url], KEYS, clients=4, deadline=DEADLINE)
    with going_on:
        with stopped:
            signalled, exited, status = stop(first, stopped)
        left = leases(redis)  # the second process's own fetches hold a few for a moment
        # Long enough for the second process to run into whatever the first left.
        time.sleep(WAIT_TIMEOUT + 1)
    check_stopped(stopped.results(), fleet, signalled, exited, status)
    others = going_on.results()
    print(f"the other process: {dict(tally(others))}")
    assert wrong_values(others, fleet.produced) == []
    assert late(others, DEADLINE) == []
    assert not_answered(others) == [], f"{len(left)} leases as the first exited: {left[:5]}"
    no_lease_left(redis)
    assert stopped.now() - exited < LEASE  # a lease the first process left is still there


def test_sigterm_under_load_answers_every_request_and_leaves_nothing(
    fleet: Fleet, redis: RedisServer
) -> None:
    """
    One process on Redis, 20 clients; SIGTERM to it.  Its clients are
    answered as above, and Redis holds no lease once it has exited.
    """
    fleet.serve(KEYS, delay=0.1)
    service = start(fleet, redis)
    with Load([service.url], KEYS, clients=20, deadline=DEADLINE) as load:
        signalled, exited, status = stop(service, load)
    check_stopped(load.results(), fleet, signalled, exited, status)
    no_lease_left(redis)
    assert load.now() - exited < LEASE  # a lease the process left is still there
