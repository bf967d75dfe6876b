"""The waiters shared by the stores, on task.Clock."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from refresherd.stores.waiters import ChangeWaiters


def test_notify_wakes_the_waiters_of_that_key_only_and_cancels_their_timers() -> None:
    clock = Clock()
    waiters = ChangeWaiters(clock)
    one, other = waiters.wait("a", 10), waiters.wait("b", 10)
    waiters.notify("a")
    assert one.called and not other.called
    assert waiters.keys() == {"b"}
    assert len(clock.getDelayedCalls()) == 1


def test_a_waiter_fires_at_its_timeout_and_leaves_nothing() -> None:
    clock = Clock()
    waiters = ChangeWaiters(clock)
    d = waiters.wait("a", 2)
    clock.advance(1.999)
    assert not d.called
    clock.advance(0.001)
    assert d.called
    assert waiters.keys() == set() and clock.getDelayedCalls() == []


def test_cancel_forgets_the_waiter_and_notify_all_wakes_the_rest() -> None:
    clock = Clock()
    waiters = ChangeWaiters(clock)
    cancelled, kept = waiters.wait("a", 5), waiters.wait("b", 5)
    cancelled.cancel()
    failures: list[object] = []
    cancelled.addErrback(lambda f: failures.append(f.trap(CancelledError)))
    assert failures == [CancelledError]
    waiters.notify_all()
    assert kept.called
    assert waiters.keys() == set() and clock.getDelayedCalls() == []


def test_a_waiter_that_waits_again_from_its_callback_waits_for_the_next_change() -> None:
    clock = Clock()
    waiters = ChangeWaiters(clock)
    again = []
    waiters.wait("a", 5).addCallback(lambda _: again.append(waiters.wait("a", 5)))
    waiters.notify("a")
    assert len(again) == 1 and not again[0].called
    waiters.notify("a")
    assert again[0].called
