"""
Tests for L{refresherd.core.policy}: the refresh decision (docs/README.md,
"Semantics"), XFetch early refresh (docs/configuration.md, "`early_refresh`:
XFetch"), backoff and lease lifetimes (docs/configuration.md, "Retries, backoff
and leases") and what is remembered after a failed fetch.  Expected values are
computed here from those pages, independently of the code under test.
"""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refresherd.core.policy import (
    ATTEMPT_BACKOFF_BASE,
    ATTEMPT_BACKOFF_CAP,
    REFRESH_BACKOFF_CAP,
    Decision,
    State,
    after_failure,
    backoff,
    decide,
    lease_ttl,
    soft_purged,
    xfetch,
)
from refresherd.entry import Entry, Fetched, value_entry

# A value fetched at T0 taking DURATION seconds, fresh for FRESH, then stale for
# STALE, then (while refreshes fail) servable until FRESH + STALE_IF_ERROR.
T0 = 1_000.0
DURATION = 2.0
FRESH = 60.0
STALE = 120.0
STALE_IF_ERROR = 600.0
FRESH_UNTIL = T0 + FRESH  # 1060
STALE_UNTIL = FRESH_UNTIL + STALE  # 1180
ERROR_UNTIL = FRESH_UNTIL + STALE_IF_ERROR  # 1660

# rand = 1 makes ln(rand) = 0: XFetch can then never fire before expiry.
NO_EARLY = 1.0
# A rand so small that -ln(rand) ~ 690: with delta 2 and beta 1 XFetch fires up
# to ~1380 s before expiry, i.e. anywhere in the fresh window above.
ALWAYS_EARLY = 1e-300


def make_value(
    *,
    now: float = T0,
    fresh: float = FRESH,
    stale: float = STALE,
    stale_if_error: float = STALE_IF_ERROR,
    duration: float = DURATION,
    body: bytes = b'{"tweets": []}',
) -> Entry:
    return value_entry(
        Fetched(body=body, content_type="application/json"),
        job="tweets",
        args={"username": "bob"},
        tags=("user:bob",),
        now=now,
        duration=duration,
        fresh=fresh,
        stale=stale,
        stale_if_error=stale_if_error,
    )


def make_failure(*, now: float = T0, error_ttl: float = 5.0, failures: int = 1) -> Entry:
    return Entry(
        body=None,
        content_type="",
        fetched_at=now,
        fresh_until=now,
        stale_until=now,
        error_until=now,
        duration=0.0,
        job="tweets",
        args={"username": "bob"},
        failures=failures,
        last_error="HTTP 500",
        retry_at=now + error_ttl,
    )


def failing(entry: Entry, *, failures: int = 1, retry_at: float = 0.0) -> Entry:
    return attrs.evolve(entry, failures=failures, last_error="HTTP 503", retry_at=retry_at)


def before(x: float) -> float:
    """The largest float smaller than C{x}."""
    return math.nextafter(x, -math.inf)


def after(x: float) -> float:
    """The smallest float larger than C{x}."""
    return math.nextafter(x, math.inf)


# ---------------------------------------------------------------------------
# decide: the table of docs/README.md, "Semantics", row by row


def test_absent_key_is_fetched() -> None:
    assert decide(T0, None, 1.0, 0.5) == Decision(State.ABSENT, refresh=True)


def test_absent_key_is_fetched_whatever_beta_and_rand() -> None:
    for beta in (0.0, 1.0, 5.0):
        for rand in (0.0, 1e-9, 0.5, 1.0):
            d = decide(T0, None, beta, rand)
            assert (d.state, d.refresh, d.early, d.fallback) == (State.ABSENT, True, False, None)


def test_failure_entry_before_retry_at_answers_failed_without_refresh() -> None:
    failure = make_failure(now=T0, error_ttl=5.0)
    for now in (T0, T0 + 2.5, before(T0 + 5.0)):
        assert decide(now, failure, 1.0, ALWAYS_EARLY) == Decision(State.FAILED, refresh=False)


def test_failure_entry_at_retry_at_is_absent_and_fetched_again() -> None:
    failure = make_failure(now=T0, error_ttl=5.0)
    assert decide(T0 + 5.0, failure, 1.0, 0.5) == Decision(State.ABSENT, refresh=True)


def test_failure_entry_after_retry_at_is_absent_without_fallback() -> None:
    failure = make_failure(now=T0, error_ttl=5.0, failures=7)
    d = decide(T0 + 3600.0, failure, 1.0, 0.5)
    assert d == Decision(State.ABSENT, refresh=True)
    assert d.fallback is None


def test_fresh_value_is_a_hit_without_refresh_when_xfetch_does_not_fire() -> None:
    entry = make_value()
    for now in (T0, T0 + 30.0, before(FRESH_UNTIL)):
        assert decide(now, entry, 1.0, NO_EARLY) == Decision(State.HIT, refresh=False)


def test_fresh_value_is_a_hit_with_early_refresh_when_xfetch_fires() -> None:
    entry = make_value()
    d = decide(FRESH_UNTIL - 1.0, entry, 1.0, ALWAYS_EARLY)
    assert d == Decision(State.HIT, refresh=True, early=True)


def test_fresh_value_early_refresh_follows_the_xfetch_threshold() -> None:
    # 10 s before expiry with delta 2, beta 1: fires iff rand <= exp(-10 / 2).
    entry = make_value()
    now = FRESH_UNTIL - 10.0
    threshold = math.exp(-10.0 / (DURATION * 1.0))
    assert decide(now, entry, 1.0, threshold * 0.99).refresh is True
    assert decide(now, entry, 1.0, threshold * 1.01).refresh is False


def test_fresh_value_never_refreshes_early_when_beta_is_zero() -> None:
    entry = make_value()
    for rand in (0.0, 1e-300, 0.5):
        for now in (T0, before(FRESH_UNTIL)):
            assert decide(now, entry, 0.0, rand) == Decision(State.HIT, refresh=False)


def test_fresh_value_never_refreshes_early_when_last_fetch_took_no_time() -> None:
    entry = make_value(duration=0.0)
    for rand in (0.0, 1e-300, 0.5):
        for now in (T0, before(FRESH_UNTIL)):
            assert decide(now, entry, 1.0, rand) == Decision(State.HIT, refresh=False)


def test_fresh_until_is_exclusive_the_value_is_stale_exactly_then() -> None:
    entry = make_value()
    assert decide(before(FRESH_UNTIL), entry, 0.0, 0.5).state is State.HIT
    assert decide(FRESH_UNTIL, entry, 0.0, 0.5) == Decision(State.STALE, refresh=True)


def test_stale_value_within_stale_is_served_and_refreshed() -> None:
    entry = make_value()
    for now in (FRESH_UNTIL, FRESH_UNTIL + 60.0, before(STALE_UNTIL)):
        assert decide(now, entry, 1.0, ALWAYS_EARLY) == Decision(State.STALE, refresh=True)


def test_stale_value_is_not_refreshed_before_retry_at() -> None:
    entry = failing(make_value(), failures=2, retry_at=FRESH_UNTIL + 50.0)
    assert decide(FRESH_UNTIL + 10.0, entry, 1.0, 0.5) == Decision(State.STALE, refresh=False)
    assert decide(before(FRESH_UNTIL + 50.0), entry, 1.0, 0.5).refresh is False


def test_stale_value_is_refreshed_once_retry_at_is_reached() -> None:
    entry = failing(make_value(), failures=2, retry_at=FRESH_UNTIL + 50.0)
    assert decide(FRESH_UNTIL + 50.0, entry, 1.0, 0.5) == Decision(State.STALE, refresh=True)
    assert decide(FRESH_UNTIL + 51.0, entry, 1.0, 0.5) == Decision(State.STALE, refresh=True)


def test_stale_until_is_exclusive() -> None:
    entry = make_value()
    assert decide(before(STALE_UNTIL), entry, 1.0, 0.5).state is State.STALE
    assert decide(STALE_UNTIL, entry, 1.0, 0.5).state is State.ABSENT


def test_past_stale_within_stale_if_error_without_failure_is_absent_with_fallback() -> None:
    entry = make_value()
    for now in (STALE_UNTIL, STALE_UNTIL + 100.0, before(ERROR_UNTIL)):
        d = decide(now, entry, 1.0, 0.5)
        assert d == Decision(State.ABSENT, refresh=True, fallback=entry)
        assert d.fallback is entry


def test_past_stale_within_stale_if_error_with_failures_is_stale() -> None:
    entry = failing(make_value(), failures=3, retry_at=STALE_UNTIL + 100.0)
    d = decide(STALE_UNTIL + 10.0, entry, 1.0, 0.5)
    assert d == Decision(State.STALE, refresh=False)
    assert d.fallback is None


def test_past_stale_with_failures_retries_once_backoff_has_passed() -> None:
    entry = failing(make_value(), failures=3, retry_at=STALE_UNTIL + 100.0)
    assert decide(STALE_UNTIL + 100.0, entry, 1.0, 0.5) == Decision(State.STALE, refresh=True)
    assert decide(before(ERROR_UNTIL), entry, 1.0, 0.5) == Decision(State.STALE, refresh=True)


def test_error_until_is_exclusive() -> None:
    plain = make_value()
    assert decide(before(ERROR_UNTIL), plain, 1.0, 0.5).fallback is plain
    assert decide(ERROR_UNTIL, plain, 1.0, 0.5) == Decision(State.ABSENT, refresh=True)
    failed = failing(plain, failures=4, retry_at=T0)
    assert decide(before(ERROR_UNTIL), failed, 1.0, 0.5).state is State.STALE
    assert decide(ERROR_UNTIL, failed, 1.0, 0.5) == Decision(State.ABSENT, refresh=True)


def test_past_every_window_is_absent_without_fallback() -> None:
    for entry in (make_value(), failing(make_value(), failures=9, retry_at=ERROR_UNTIL + 99)):
        d = decide(ERROR_UNTIL + 3600.0, entry, 1.0, ALWAYS_EARLY)
        assert d == Decision(State.ABSENT, refresh=True)


def test_stale_if_error_shorter_than_stale_ends_at_stale_until() -> None:
    # error_until < stale_until: the value is stale until stale_until, then gone.
    entry = make_value(stale=120.0, stale_if_error=30.0)
    failed = failing(entry, failures=1, retry_at=T0)
    for e in (entry, failed):
        assert decide(FRESH_UNTIL + 60.0, e, 1.0, 0.5).state is State.STALE
        assert decide(before(STALE_UNTIL), e, 1.0, 0.5).state is State.STALE
        assert decide(STALE_UNTIL, e, 1.0, 0.5) == Decision(State.ABSENT, refresh=True)


def test_zero_stale_value_goes_from_hit_to_absent_with_fallback() -> None:
    entry = make_value(stale=0.0)
    assert decide(before(FRESH_UNTIL), entry, 0.0, 0.5).state is State.HIT
    assert decide(FRESH_UNTIL, entry, 0.0, 0.5) == Decision(
        State.ABSENT, refresh=True, fallback=entry
    )


def test_zero_windows_value_is_absent_from_the_moment_it_was_fetched() -> None:
    entry = make_value(fresh=0.0, stale=0.0, stale_if_error=0.0)
    assert decide(T0, entry, 1.0, 0.0) == Decision(State.ABSENT, refresh=True)


def test_only_hits_are_early_refreshes() -> None:
    entry = make_value()
    for now in (FRESH_UNTIL, STALE_UNTIL, ERROR_UNTIL):
        assert decide(now, entry, 1.0, ALWAYS_EARLY).early is False


# ---------------------------------------------------------------------------
# decide: properties over arbitrary entries

TIMES = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
SPANS = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
BETAS = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
RANDS = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def value_entries(draw: st.DrawFn) -> Entry:
    return make_value(
        now=draw(TIMES),
        fresh=draw(SPANS),
        stale=draw(SPANS),
        stale_if_error=draw(SPANS),
        duration=draw(st.floats(min_value=0.0, max_value=1e4, allow_nan=False)),
    )


@st.composite
def value_entries_maybe_failing(draw: st.DrawFn) -> Entry:
    entry = draw(value_entries())
    if draw(st.booleans()):
        retry_at = entry.fetched_at + draw(SPANS) * 3
        entry = failing(entry, failures=draw(st.integers(1, 50)), retry_at=retry_at)
    return entry


@st.composite
def any_entries(draw: st.DrawFn) -> Entry:
    if draw(st.booleans()):
        return make_failure(
            now=draw(TIMES), error_ttl=draw(SPANS), failures=draw(st.integers(1, 50))
        )
    return draw(value_entries_maybe_failing())


@st.composite
def instants_for(draw: st.DrawFn, entry: Entry) -> float:
    """Any time, often exactly at or just around one of the entry's boundaries."""
    edges = [
        entry.fetched_at,
        entry.fresh_until,
        entry.stale_until,
        entry.error_until,
        entry.retry_at,
        entry.expires_at,
    ]
    edge = draw(st.sampled_from(edges))
    return draw(
        st.one_of(
            st.just(edge),
            st.just(before(edge)),
            st.just(after(edge)),
            st.floats(min_value=0.0, max_value=2e9, allow_nan=False),
        )
    )


def expected_state(now: float, entry: Entry) -> tuple[State, bool, Entry | None]:
    """
    The table of docs/README.md, "Semantics", except the XFetch coin:
    (state, refresh, fallback).
    """
    if entry.body is None:
        if now < entry.retry_at:
            return State.FAILED, False, None
        return State.ABSENT, True, None
    if now < entry.fresh_until:
        return State.HIT, False, None  # refresh decided by XFetch, checked separately
    if now < entry.stale_until:
        return State.STALE, now >= entry.retry_at, None
    if now < entry.error_until and entry.failures > 0:
        return State.STALE, now >= entry.retry_at, None
    if now < entry.error_until:
        return State.ABSENT, True, entry
    return State.ABSENT, True, None


@given(data=st.data(), entry=any_entries(), beta=BETAS, rand=RANDS)
def test_decide_matches_the_semantics_table(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    d = decide(now, entry, beta, rand)
    state, refresh, fallback = expected_state(now, entry)
    assert d.state is state
    assert d.fallback is fallback
    if state is State.HIT:
        early = now >= entry.retry_at and xfetch(now, entry.duration, beta, entry.fresh_until, rand)
        assert d.refresh == d.early == early
    else:
        assert d.refresh is refresh
        assert d.early is False


@given(data=st.data(), entry=value_entries(), beta=BETAS, rand=RANDS)
def test_value_entry_is_a_hit_exactly_while_now_is_before_fresh_until(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    assert (decide(now, entry, beta, rand).state is State.HIT) == (now < entry.fresh_until)


@given(data=st.data(), entry=value_entries_maybe_failing(), beta=BETAS, rand=RANDS)
def test_value_entry_is_never_failed(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    assert decide(now, entry, beta, rand).state is not State.FAILED


@given(data=st.data(), entry=any_entries(), beta=BETAS, rand=RANDS)
def test_failed_never_refreshes_and_absent_always_refreshes(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    d = decide(now, entry, beta, rand)
    if d.state is State.FAILED:
        assert d.refresh is False
    if d.state is State.ABSENT:
        assert d.refresh is True


@given(data=st.data(), entry=any_entries(), beta=BETAS, rand=RANDS)
def test_fallback_only_comes_with_absent_and_is_the_entry_itself(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    d = decide(now, entry, beta, rand)
    if d.fallback is not None:
        assert d.state is State.ABSENT
        assert d.fallback is entry
        assert entry.body is not None
        assert entry.stale_until <= now < entry.error_until


@given(data=st.data(), entry=any_entries(), beta=BETAS, rand=RANDS)
def test_early_only_on_hits_and_always_with_refresh(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    d = decide(now, entry, beta, rand)
    if d.early:
        assert d.state is State.HIT
        assert d.refresh is True


@given(data=st.data(), entry=value_entries_maybe_failing(), beta=BETAS, rand=RANDS)
def test_value_past_expires_at_stays_absent_without_fallback_for_ever(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    later = data.draw(st.floats(min_value=0.0, max_value=1e9, allow_nan=False))
    now = entry.expires_at + later
    assert decide(now, entry, beta, rand) == Decision(State.ABSENT, refresh=True)


# HIT, then STALE, then ABSENT: a value only ever gets worse as time passes.
_RANK = {State.HIT: 0, State.STALE: 1, State.ABSENT: 2}


@given(data=st.data(), entry=value_entries_maybe_failing(), beta=BETAS, rand=RANDS)
def test_value_state_only_degrades_as_time_passes(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    t1 = data.draw(instants_for(entry))
    t2 = data.draw(instants_for(entry))
    t1, t2 = min(t1, t2), max(t1, t2)
    d1, d2 = decide(t1, entry, beta, rand), decide(t2, entry, beta, rand)
    assert _RANK[d1.state] <= _RANK[d2.state]
    if d1.state is State.ABSENT and d1.fallback is None:
        assert d2.fallback is None


@given(data=st.data(), entry=any_entries(), beta=BETAS, rand=RANDS)
def test_decide_is_a_pure_function(
    data: st.DataObject, entry: Entry, beta: float, rand: float
) -> None:
    now = data.draw(instants_for(entry))
    snapshot = attrs.asdict(entry)
    assert decide(now, entry, beta, rand) == decide(now, entry, beta, rand)
    assert attrs.asdict(entry) == snapshot


# ---------------------------------------------------------------------------
# xfetch

POSITIVE = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)


@given(now=TIMES, delta=SPANS, expiry=TIMES, rand=RANDS)
def test_xfetch_never_fires_when_beta_is_zero(
    now: float, delta: float, expiry: float, rand: float
) -> None:
    assert xfetch(now, delta, 0.0, expiry, rand) is False


@given(now=TIMES, beta=BETAS, expiry=TIMES, rand=RANDS)
def test_xfetch_never_fires_when_delta_is_zero(
    now: float, beta: float, expiry: float, rand: float
) -> None:
    assert xfetch(now, 0.0, beta, expiry, rand) is False


@given(now=TIMES, delta=POSITIVE, beta=POSITIVE, expiry=TIMES)
def test_xfetch_with_rand_one_fires_exactly_at_and_after_expiry(
    now: float, delta: float, beta: float, expiry: float
) -> None:
    assert xfetch(now, delta, beta, expiry, 1.0) is (now >= expiry)


def test_xfetch_with_rand_one_boundary_is_expiry_itself() -> None:
    assert xfetch(before(100.0), 5.0, 1.0, 100.0, 1.0) is False
    assert xfetch(100.0, 5.0, 1.0, 100.0, 1.0) is True
    assert xfetch(after(100.0), 5.0, 1.0, 100.0, 1.0) is True


@given(now=TIMES, delta=POSITIVE, beta=POSITIVE, expiry=TIMES)
def test_xfetch_with_rand_zero_always_fires(
    now: float, delta: float, beta: float, expiry: float
) -> None:
    assert xfetch(now, delta, beta, expiry, 0.0) is True


@given(
    gap=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    delta=POSITIVE,
    beta=POSITIVE,
)
def test_xfetch_fires_for_any_rand_below_the_closed_form_probability(
    gap: float, delta: float, beta: float
) -> None:
    # Fires iff rand <= exp(-gap / (delta * beta)): half that always fires, so a
    # small enough rand fires however far the expiry is.
    p = math.exp(-gap / (delta * beta))
    assume(p > 1e-300)
    expiry = 1e6
    assert xfetch(expiry - gap, delta, beta, expiry, p / 2) is True
    if p < 0.5:
        assert xfetch(expiry - gap, delta, beta, expiry, min(1.0, p * 2)) is False


def test_xfetch_fires_for_ever_smaller_rands_as_they_approach_zero() -> None:
    fired = [xfetch(0.0, 1.0, 1.0, 50.0, 10.0**-k) for k in range(0, 40)]
    # -ln(10**-k) = k ln 10 >= 50 from k = 22 on.
    assert fired == [k * math.log(10) >= 50.0 for k in range(0, 40)]
    assert fired[-1] is True


GRID = 100_000
_GRID_RANDS = [k / GRID for k in range(1, GRID + 1)]  # a fine uniform grid of (0, 1]


@pytest.mark.parametrize(
    ("gap", "delta", "beta"),
    [
        (0.0, 1.0, 1.0),
        (0.5, 1.0, 1.0),
        (1.0, 1.0, 1.0),
        (3.0, 1.0, 1.0),
        (10.0, 2.0, 1.0),
        (10.0, 2.0, 3.0),
        (30.0, 0.25, 40.0),
        (100.0, 5.0, 0.5),
    ],
)
def test_xfetch_empirical_probability_matches_closed_form(
    gap: float, delta: float, beta: float
) -> None:
    expiry = 10_000.0
    now = expiry - gap
    fired = sum(xfetch(now, delta, beta, expiry, r) for r in _GRID_RANDS)
    expected = math.exp(-gap / (delta * beta))
    assert abs(fired / GRID - expected) <= 3 / GRID


@pytest.mark.parametrize("past", [0.0, 1.0, 1e6])
def test_xfetch_empirical_probability_is_one_at_and_after_expiry(past: float) -> None:
    expiry = 10_000.0
    assert all(xfetch(expiry + past, 2.0, 1.0, expiry, r) for r in _GRID_RANDS)


def test_xfetch_probability_grows_as_expiry_approaches() -> None:
    expiry = 1_000.0
    fractions = [
        sum(xfetch(expiry - gap, 2.0, 1.0, expiry, r) for r in _GRID_RANDS[::10])
        for gap in (20.0, 10.0, 5.0, 1.0, 0.0)
    ]
    assert fractions == sorted(fractions)
    assert fractions[0] < fractions[-1]


@given(
    now=TIMES,
    delta=POSITIVE,
    expiry=TIMES,
    rand=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    b1=POSITIVE,
    b2=POSITIVE,
)
def test_xfetch_larger_beta_fires_whenever_smaller_beta_does(
    now: float, delta: float, expiry: float, rand: float, b1: float, b2: float
) -> None:
    small, large = min(b1, b2), max(b1, b2)
    if xfetch(now, delta, small, expiry, rand):
        assert xfetch(now, delta, large, expiry, rand)


def test_xfetch_larger_beta_refreshes_earlier() -> None:
    # With rand = e**-1, the refresh starts delta * beta seconds before expiry.
    rand = math.exp(-1.0)
    expiry, delta = 1_000.0, 2.0
    now = expiry - 5.0
    assert xfetch(now, delta, 2.0, expiry, rand) is False  # from 4 s before expiry
    assert xfetch(now, delta, 3.0, expiry, rand) is True  # from 6 s before expiry
    earliest = {
        beta: min(t for t in range(900, 1001) if xfetch(float(t), delta, beta, expiry, rand))
        for beta in (1.0, 2.0, 5.0, 10.0)
    }
    assert earliest == {1.0: 998, 2.0: 996, 5.0: 990, 10.0: 980}


# ---------------------------------------------------------------------------
# backoff


def _cap_of(attempt: int, base: float, cap: float) -> float:
    """d = min(cap, base * 2**attempt), computed without overflowing."""
    try:
        return min(cap, math.ldexp(base, attempt))
    except OverflowError:
        return cap


BASES = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)
CAPS = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)


@given(attempt=st.integers(0, 10**9), base=BASES, cap=CAPS, rand=RANDS)
def test_backoff_lies_between_half_and_whole_capped_exponential(
    attempt: int, base: float, cap: float, rand: float
) -> None:
    d = _cap_of(attempt, base, cap)
    assert d / 2 <= backoff(attempt, base, cap, rand) <= d


@pytest.mark.parametrize(
    ("attempt", "expected_d"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (6, 10.0), (50, 10.0)],
)
def test_backoff_rand_zero_and_one_give_the_ends_of_the_range(
    attempt: int, expected_d: float
) -> None:
    assert backoff(attempt, 0.5, 10.0, 0.0) == expected_d / 2
    assert backoff(attempt, 0.5, 10.0, 1.0) == expected_d


def test_backoff_doubles_with_each_attempt_until_the_cap() -> None:
    delays = [backoff(a, 1.0, 300.0, 0.5) for a in range(12)]
    # d = 1, 2, 4, ..., 256, then 300: delay = 0.75 d.
    assert delays == [0.75 * min(300.0, 2.0**a) for a in range(12)]
    assert all(b == 2 * a for a, b in zip(delays[:8], delays[1:9], strict=True))
    assert delays[9] == delays[10] == delays[11] == 225.0


@given(attempt=st.integers(0, 10_000), base=BASES, cap=CAPS, rand=RANDS)
def test_backoff_never_shrinks_with_attempt(
    attempt: int, base: float, cap: float, rand: float
) -> None:
    assert backoff(attempt, base, cap, rand) <= backoff(attempt + 1, base, cap, rand)


@given(attempt=st.integers(0, 100), base=BASES, cap=CAPS, r1=RANDS, r2=RANDS)
def test_backoff_grows_with_rand(
    attempt: int, base: float, cap: float, r1: float, r2: float
) -> None:
    lo, hi = min(r1, r2), max(r1, r2)
    assert backoff(attempt, base, cap, lo) <= backoff(attempt, base, cap, hi)


@pytest.mark.parametrize("attempt", [64, 65, 1023, 1024, 1100, 10**6, 10**18, 2**200])
def test_backoff_huge_attempt_does_not_overflow_and_is_capped(attempt: int) -> None:
    for rand in (0.0, 0.5, 1.0):
        delay = backoff(attempt, 0.5, 10.0, rand)
        assert math.isfinite(delay)
        assert delay == 5.0 + 5.0 * rand


# ---------------------------------------------------------------------------
# lease_ttl


def _worst_case_fetch(timeout: float, retries: int) -> float:
    """Every attempt times out and every pause between attempts is its longest."""
    pauses = sum(min(ATTEMPT_BACKOFF_CAP, ATTEMPT_BACKOFF_BASE * 2.0**i) for i in range(retries))
    return (retries + 1) * timeout + pauses


TIMEOUTS = st.floats(min_value=0.001, max_value=3600.0, allow_nan=False)


def test_lease_ttl_covers_a_single_attempt_plus_a_margin() -> None:
    assert lease_ttl(10.0, 0) > 10.0


def test_lease_ttl_covers_three_attempts_and_their_pauses() -> None:
    # 3 attempts of 10 s, pauses of at most 0.5 s and 1 s between them.
    assert lease_ttl(10.0, 2) > 31.5


def test_lease_ttl_covers_capped_pauses_of_many_retries() -> None:
    # pauses 0.5, 1, 2, 4, 8, then 10 for each further retry
    retries = 12
    worst = 13 * 1.0 + (0.5 + 1 + 2 + 4 + 8) + 7 * 10.0
    assert lease_ttl(1.0, retries) > worst


@given(timeout=TIMEOUTS, retries=st.integers(0, 100))
def test_lease_ttl_exceeds_worst_case_fetch_by_a_positive_margin(
    timeout: float, retries: int
) -> None:
    assert lease_ttl(timeout, retries) > _worst_case_fetch(timeout, retries)


@given(timeout=TIMEOUTS, retries=st.integers(0, 30), data=st.data())
def test_lease_ttl_outlives_any_actual_run_of_attempts_and_backoffs(
    timeout: float, retries: int, data: st.DataObject
) -> None:
    rands = data.draw(st.lists(RANDS, min_size=retries, max_size=retries))
    run = (retries + 1) * timeout + sum(
        backoff(i, ATTEMPT_BACKOFF_BASE, ATTEMPT_BACKOFF_CAP, r) for i, r in enumerate(rands)
    )
    assert lease_ttl(timeout, retries) > run


@given(timeout=TIMEOUTS, retries=st.integers(0, 100))
def test_lease_ttl_grows_with_retries(timeout: float, retries: int) -> None:
    assert lease_ttl(timeout, retries + 1) > lease_ttl(timeout, retries)


@given(t1=TIMEOUTS, t2=TIMEOUTS, retries=st.integers(0, 100))
def test_lease_ttl_grows_with_timeout(t1: float, t2: float, retries: int) -> None:
    lo, hi = min(t1, t2), max(t1, t2)
    assume(hi > lo * 1.001 + 1e-6)  # apart by more than float rounding of the sum
    assert lease_ttl(lo, retries) < lease_ttl(hi, retries)


def test_lease_ttl_of_a_fast_job_is_short() -> None:
    # A crashed holder must not block its key for long: bounded by the worst
    # case plus a margin of well under a minute.
    assert lease_ttl(1.0, 0) < 60.0
    assert lease_ttl(1.0, 3) - _worst_case_fetch(1.0, 3) < 60.0


# ---------------------------------------------------------------------------
# after_failure


def fail(
    now: float, previous: Entry | None, *, error_ttl: float = 5.0, rand: float = 0.5
) -> Entry | None:
    return after_failure(
        now,
        previous,
        job="tweets",
        args={"username": "bob"},
        error="HTTP 502 from upstream",
        error_ttl=error_ttl,
        rand=rand,
    )


def test_after_failure_keeps_a_servable_value_and_records_the_failure() -> None:
    previous = make_value()
    now = FRESH_UNTIL + 10.0  # stale
    result = fail(now, previous)
    assert result is not None
    assert result.body == previous.body
    assert result.content_type == previous.content_type
    assert result.etag == previous.etag != ""
    assert result.fetched_at == previous.fetched_at
    assert result.fresh_until == previous.fresh_until
    assert result.stale_until == previous.stale_until
    assert result.error_until == previous.error_until
    assert result.duration == previous.duration
    assert result.tags == previous.tags
    assert result.failures == 1
    assert result.last_error == "HTTP 502 from upstream"
    assert result.retry_at > now


def test_after_failure_on_a_fresh_value_keeps_it_too() -> None:
    # e.g. an early refresh that failed
    previous = make_value()
    result = fail(T0 + 1.0, previous)
    assert result is not None
    assert result.body == previous.body
    assert result.failures == 1
    assert result.retry_at > T0 + 1.0


def test_after_failure_increments_failures_of_a_failing_value() -> None:
    previous = failing(make_value(), failures=4, retry_at=STALE_UNTIL)
    result = fail(STALE_UNTIL + 1.0, previous)
    assert result is not None
    assert result.failures == 5
    assert result.body == previous.body


def test_after_failure_of_a_fallback_value_makes_it_stale_until_the_backoff_passes() -> None:
    previous = make_value()
    now = STALE_UNTIL + 10.0
    assert decide(now, previous, 1.0, 0.5).fallback is previous
    result = fail(now, previous, rand=0.0)
    assert result is not None
    assert decide(now, result, 1.0, 0.5) == Decision(State.STALE, refresh=False)
    assert decide(before(result.retry_at), result, 1.0, 0.5).refresh is False
    assert decide(result.retry_at, result, 1.0, 0.5) == Decision(State.STALE, refresh=True)


@pytest.mark.parametrize("rand", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("error_ttl", [0.0, 0.5, 1.0, 5.0, 30.0])
def test_after_failure_pause_is_a_backoff_on_failures_based_on_error_ttl(
    rand: float, error_ttl: float
) -> None:
    now = FRESH_UNTIL + 1.0
    for failures in range(0, 20):
        previous = failing(make_value(), failures=failures, retry_at=0.0)
        result = fail(now, previous, error_ttl=error_ttl, rand=rand)
        assert result is not None
        base = max(error_ttl, 1.0)
        d = min(REFRESH_BACKOFF_CAP, base * 2.0**failures)
        assert result.retry_at - now == pytest.approx(d / 2 + d / 2 * rand)


def test_after_failure_pause_grows_with_failures_up_to_the_cap() -> None:
    now = FRESH_UNTIL + 1.0
    pauses = []
    for failures in range(0, 30):
        previous = failing(make_value(), failures=failures, retry_at=0.0)
        result = fail(now, previous, error_ttl=5.0, rand=1.0)
        assert result is not None
        pauses.append(result.retry_at - now)
    assert pauses == sorted(pauses)
    assert pauses[0] < pauses[1] < pauses[2] < pauses[3]
    assert max(pauses) == REFRESH_BACKOFF_CAP
    assert pauses[-1] == REFRESH_BACKOFF_CAP


@given(
    failures=st.integers(0, 10**6),
    error_ttl=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    rand=RANDS,
)
def test_after_failure_pause_is_positive_and_bounded_by_the_refresh_cap(
    failures: int, error_ttl: float, rand: float
) -> None:
    now = FRESH_UNTIL + 1.0
    previous = failing(make_value(), failures=failures, retry_at=0.0)
    result = fail(now, previous, error_ttl=error_ttl, rand=rand)
    assert result is not None
    assert result.failures == failures + 1
    assert 0 < result.retry_at - now <= REFRESH_BACKOFF_CAP


def test_after_failure_without_previous_value_remembers_a_failure_for_error_ttl() -> None:
    now = 2_000.0
    result = fail(now, None, error_ttl=5.0)
    assert result is not None
    assert result.body is None
    assert result.is_failure
    assert result.failures == 1
    assert result.last_error == "HTTP 502 from upstream"
    assert result.retry_at == 2_005.0
    assert result.expires_at == 2_005.0
    assert result.job == "tweets"
    assert dict(result.args) == {"username": "bob"}


def test_after_failure_without_previous_value_is_failed_until_error_ttl_passes() -> None:
    result = fail(2_000.0, None, error_ttl=5.0)
    assert result is not None
    assert decide(2_000.0, result, 1.0, 0.5) == Decision(State.FAILED, refresh=False)
    assert decide(before(2_005.0), result, 1.0, 0.5).state is State.FAILED
    assert decide(2_005.0, result, 1.0, 0.5) == Decision(State.ABSENT, refresh=True)


def test_after_failure_without_previous_value_and_zero_error_ttl_stores_nothing() -> None:
    assert fail(2_000.0, None, error_ttl=0.0) is None


def test_after_failure_copies_args_rather_than_sharing_the_callers_dict() -> None:
    args = {"username": "bob"}
    result = after_failure(
        1.0, None, job="tweets", args=args, error="boom", error_ttl=5.0, rand=0.5
    )
    assert result is not None
    args["username"] = "eve"
    assert dict(result.args) == {"username": "bob"}


def test_after_failure_of_a_failure_entry_increments_its_failures() -> None:
    previous = make_failure(now=T0, error_ttl=5.0, failures=3)
    result = fail(T0 + 6.0, previous, error_ttl=5.0)
    assert result is not None
    assert result.is_failure
    assert result.failures == 4
    assert result.retry_at == T0 + 11.0
    assert result.last_error == "HTTP 502 from upstream"


def test_after_failure_of_a_failure_entry_with_zero_error_ttl_stores_nothing() -> None:
    assert fail(T0 + 6.0, make_failure(now=T0), error_ttl=0.0) is None


@pytest.mark.parametrize("past", [0.0, 1.0, 86_400.0])
def test_after_failure_of_an_expired_value_is_like_no_value(past: float) -> None:
    previous = failing(make_value(), failures=6, retry_at=0.0)
    now = previous.expires_at + past
    result = fail(now, previous, error_ttl=5.0)
    assert result is not None
    assert result.body is None
    assert result.failures == 1
    assert result.retry_at == now + 5.0
    assert decide(now, result, 1.0, 0.5).state is State.FAILED


def test_after_failure_of_an_expired_value_with_zero_error_ttl_stores_nothing() -> None:
    previous = make_value()
    assert fail(previous.expires_at, previous, error_ttl=0.0) is None


def test_after_failure_just_before_expiry_still_keeps_the_value() -> None:
    previous = make_value()
    result = fail(before(previous.expires_at), previous, error_ttl=0.0)
    assert result is not None
    assert result.body == previous.body
    assert result.failures == 1


@given(data=st.data(), previous=value_entries_maybe_failing(), error_ttl=SPANS, rand=RANDS)
def test_after_failure_keeps_the_value_exactly_while_it_is_servable(
    data: st.DataObject, previous: Entry, error_ttl: float, rand: float
) -> None:
    now = data.draw(instants_for(previous))
    result = fail(now, previous, error_ttl=error_ttl, rand=rand)
    servable = decide(now, previous, 0.0, rand).state is not State.ABSENT or (
        decide(now, previous, 0.0, rand).fallback is not None
    )
    if servable:
        assert result is not None
        assert result.body == previous.body
        assert result.etag == previous.etag
        assert result.fetched_at == previous.fetched_at
        assert result.failures == previous.failures + 1
        # Once a refresh failed, the value is served stale, not treated as absent.
        if now >= previous.fresh_until:
            assert decide(now, result, 0.0, rand).state is State.STALE
    elif error_ttl > 0:
        assert result is not None
        assert result.body is None
        assert result.failures == 1
        assert result.retry_at == now + error_ttl
    else:
        assert result is None


def test_early_refresh_waits_for_the_backoff_after_a_failed_refresh() -> None:
    """A failed early refresh pushes retry_at back; hits before it start no new refresh."""
    entry = value_entry(
        Fetched(b"v", "text/plain"),
        job="j",
        args={},
        tags=(),
        now=1000.0,
        duration=2.0,
        fresh=60.0,
        stale=120.0,
        stale_if_error=600.0,
    )
    failed = after_failure(1059.0, entry, job="j", args={}, error="down", error_ttl=5.0, rand=1.0)
    assert failed is not None and failed.retry_at > 1059.5
    decision = decide(1059.5, failed, 1.0, 0.5)
    assert (decision.state, decision.refresh) == (State.HIT, False)
    later = decide(failed.retry_at, failed, 1.0, 1e-12)
    assert (later.state, later.refresh) == (State.STALE, True)


GRACE = 15.0


@given(st.floats(min_value=T0, max_value=STALE_UNTIL, exclude_max=True))
def test_a_soft_purged_servable_value_is_stale_and_refreshed(now: float) -> None:
    marked = soft_purged(make_value(), now, GRACE)
    assert decide(now, marked, 1.0, NO_EARLY) == Decision(State.STALE, refresh=True)


def test_a_soft_purged_value_stays_servable_until_it_would_have_stopped_being_fresh() -> None:
    value = make_value(stale=0.0)
    marked = soft_purged(value, T0 + 1, GRACE)
    assert (marked.fresh_until, marked.stale_until) == (T0 + 1, FRESH_UNTIL)
    assert decide(FRESH_UNTIL - 0.1, marked, 1.0, NO_EARLY).state is State.STALE
    assert decide(FRESH_UNTIL, marked, 1.0, NO_EARLY).state is State.ABSENT


def test_a_soft_purged_value_stays_servable_for_one_refresh_at_least() -> None:
    marked = soft_purged(make_value(stale=0.0), FRESH_UNTIL - 1, GRACE)
    assert marked.stale_until == FRESH_UNTIL - 1 + GRACE
    assert decide(FRESH_UNTIL + GRACE - 2, marked, 1.0, NO_EARLY).state is State.STALE


def test_soft_purge_leaves_alone_what_cannot_be_served_as_it_is() -> None:
    failure = make_failure()
    assert soft_purged(failure, T0, GRACE) is failure
    value = make_value()
    assert soft_purged(value, STALE_UNTIL, GRACE) is value
    assert soft_purged(failing(value), STALE_UNTIL + 1, GRACE).stale_until == STALE_UNTIL
