"""
The refresh decision, as pure functions of plain values.

Given the time, the entry in the store (or none) and a random number, L{decide}
says what a request is answered with and whether a refresh must start; the
other functions compute backoff delays, lease lifetimes, XFetch early refresh
and what to remember after a failed fetch.  Nothing here does I/O or knows
Twisted; every source of chance is a parameter.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

import attrs

from refresherd.entry import Entry

ATTEMPT_BACKOFF_BASE = 0.5
"""Seconds before the second attempt of one fetch; doubled for each further attempt."""
ATTEMPT_BACKOFF_CAP = 10.0
REFRESH_BACKOFF_CAP = 300.0
"""Longest pause between refreshes of a value whose refreshes keep failing."""
LEASE_MARGIN = 5.0
STORE_MARGIN = 60.0
"""Seconds the store keeps an entry past its last window, for hosts whose clocks differ."""
POLL_FIRST = 0.05
POLL_INTERVAL = 0.5
"""While a fetch runs in another process, the store is read again after POLL_FIRST
seconds, the pause doubling up to POLL_INTERVAL: for stores without change notices
(memcached), and should a notice be lost."""


class State(enum.Enum):
    HIT = "hit"
    """Fresh: answer it."""
    STALE = "stale"
    """Past freshness but servable: answer it, refresh in the background."""
    ABSENT = "absent"
    """Nothing servable: fetch (and wait, or answer pending)."""
    FAILED = "failed"
    """Absent, and its last fetch failed less than C{error_ttl} ago: 502 at once."""


@attrs.frozen
class Decision:
    state: State
    refresh: bool
    """A refresh of the key should start now, unless one is already running."""
    early: bool = False
    """The refresh is an XFetch early refresh of a fresh value."""
    fallback: Entry | None = None
    """For ABSENT: a value past C{stale} but within C{stale_if_error}, served
    stale (with the error) if the fetch fails or C{wait_timeout} passes."""


HIT = Decision(State.HIT, refresh=False)
"""A fresh value, nothing to start: what nearly every lookup decides."""
_FAILED = Decision(State.FAILED, refresh=False)
_ABSENT = Decision(State.ABSENT, refresh=True)
_STALE = {due: Decision(State.STALE, refresh=due) for due in (False, True)}
"""The decisions that carry nothing of their entry, made once (every request makes one)."""


def xfetch(now: float, delta: float, beta: float, expiry: float, rand: float) -> bool:
    """
    Whether to refresh a fresh value early (Vattani, Chierichetti and
    Lowenstein, "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015):
    true when C{now - delta * beta * ln(rand) >= expiry}, C{rand} uniform in
    (0, 1].  C{delta} is how long the last fetch took; C{beta} 0 turns it off.
    """
    if beta <= 0 or delta <= 0:
        return False
    if rand <= 0:
        return True
    return now - delta * beta * math.log(rand) >= expiry


def decide(now: float, entry: Entry | None, beta: float, rand: float) -> Decision:
    """
    What a request that finds C{entry} (or nothing) at C{now} is answered
    with, and whether a refresh must start (docs/README.md, "Semantics";
    docs/store-format.md, "Deciding hit, stale or absent").
    """
    if entry is None:
        return _ABSENT
    if entry.is_failure:
        return _FAILED if now < entry.retry_at else _ABSENT
    if now < entry.fresh_until:
        if now >= entry.retry_at and xfetch(now, entry.duration, beta, entry.fresh_until, rand):
            return Decision(State.HIT, refresh=True, early=True)
        return HIT
    due = now >= entry.retry_at
    if now < entry.stale_until:
        return _STALE[due]
    if now < entry.error_until:
        if entry.failures:
            return _STALE[due]
        return Decision(State.ABSENT, refresh=True, fallback=entry)
    return _ABSENT


def _doubled(base: float, times: int) -> float:
    """C{base * 2**times} as a float, infinite rather than an overflow."""
    return base * 2.0**times if times < 1024 else math.inf


def backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """
    Exponential backoff with jitter: the delay after failure number
    C{attempt} (0 for the first) lies in [d/2, d], d = min(cap, base * 2**attempt).
    """
    delay = min(cap, _doubled(base, attempt))
    return delay / 2 + delay / 2 * rand


def lease_ttl(timeout: float, retries: int) -> float:
    """
    How long a fetch's lease lives: every attempt's timeout and the longest
    backoff between them, plus a margin, so that a holder that crashed or hung
    never blocks its key for long, and a live one never loses it.
    """
    doubling = [
        min(ATTEMPT_BACKOFF_CAP, _doubled(ATTEMPT_BACKOFF_BASE, i)) for i in range(min(retries, 64))
    ]
    pauses = sum(doubling) + ATTEMPT_BACKOFF_CAP * max(0, retries - 64)
    return timeout * (retries + 1) + pauses + LEASE_MARGIN


def after_failure(
    now: float,
    previous: Entry | None,
    *,
    job: str,
    args: Mapping[str, str],
    error: str,
    error_ttl: float,
    rand: float,
) -> Entry | None:
    """
    What to store after a fetch of a key failed with C{error}, given what the
    store held when it started: the previous value with the failure recorded
    and the next refresh pushed back, while that value can still be served;
    else a failure remembered for C{error_ttl} (nothing when that is 0).
    """
    if previous is not None and not previous.is_failure and now < previous.expires_at:
        pause = backoff(previous.failures, max(error_ttl, 1.0), REFRESH_BACKOFF_CAP, rand)
        return attrs.evolve(
            previous, failures=previous.failures + 1, last_error=error, retry_at=now + pause
        )
    if error_ttl <= 0:
        return None
    failures = previous.failures + 1 if previous is not None and previous.is_failure else 1
    return Entry(
        body=None,
        content_type="",
        fetched_at=now,
        fresh_until=now,
        stale_until=now,
        error_until=now,
        duration=0.0,
        job=job,
        args=dict(args),
        failures=failures,
        last_error=error,
        retry_at=now + error_ttl,
    )


def soft_purged(entry: Entry, now: float, grace: float) -> Entry:
    """
    C{entry} soft-purged at C{now}: a value that is fresh or stale stops being
    fresh, and stays servable (stale, so that one refresh starts) until it
    would have stopped being fresh, and for C{grace} seconds (one refresh's
    lease) at least, even with C{stale = 0}.  Anything else is unchanged: a
    failure, or a value already past its stale window (served, if at all,
    while refreshes fail within C{stale_if_error}).
    """
    if entry.is_failure or now >= max(entry.fresh_until, entry.stale_until):
        return entry
    return attrs.evolve(
        entry,
        fresh_until=min(entry.fresh_until, now),
        stale_until=max(entry.stale_until, entry.fresh_until, now + grace),
    )
