"""
The hot keys sketch (refresherd.core.hotkeys) on plain numbers: heavy hitters
found, decay by the half-life, the bound of K keys, merges, and the
Space-Saving guarantees under Hypothesis.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refresherd.core.hotkeys import FORGOTTEN, RENORMALIZE_AT, HotKeys, HotKeysRegistry


def zipf_stream(keys: int, count: int, seed: int = 1, s: float = 1.1) -> list[str]:
    weights = [1 / (rank**s) for rank in range(1, keys + 1)]
    return random.Random(seed).choices([f"k{i}" for i in range(keys)], weights, k=count)


def test_the_heavy_hitters_of_a_zipf_stream_are_found_in_order() -> None:
    sketch = HotKeys(capacity=100, half_life=60)
    stream = zipf_stream(10_000, 50_000)
    for i, key in enumerate(stream):
        sketch.observe(key, {"id": key}, now=i / 1000)  # 1000 requests a second, 50 s
    top = sketch.top(now=50.0, n=10)
    assert [hot.key for hot in top[:5]] == ["k0", "k1", "k2", "k3", "k4"]
    true = Counter(stream).most_common(10)
    assert {hot.key for hot in top} >= {key for key, _ in true[:8]}
    assert top[0].args == {"id": "k0"}
    rates = [hot.rate for hot in top]
    assert rates == sorted(rates, reverse=True)


def test_a_steady_rate_reads_as_itself() -> None:
    """A key asked 10 times a second for many half-lives reads about 10 per second."""
    sketch = HotKeys(capacity=10, half_life=5)
    for i in range(2000):
        sketch.observe("a", {}, now=i / 10)
    (hot,) = sketch.top(now=199.9)
    assert hot.rate == pytest.approx(10, rel=0.05)
    assert hot.error == 0


def test_a_key_no_longer_requested_halves_every_half_life_and_drops_out() -> None:
    sketch = HotKeys(capacity=2, half_life=60)
    for i in range(600):
        sketch.observe("old", {}, now=i / 10)  # 10 a second for a minute
    before = sketch.top(now=60.0)[0].rate
    assert sketch.top(now=120.0)[0].rate == pytest.approx(before / 2)
    assert sketch.top(now=180.0)[0].rate == pytest.approx(before / 4)
    # Two new keys, asked 2 a second: "old" is the least and replaced within the minute
    # after its rate fell below theirs (about 5 half-lives after it stopped).
    for i in range(60 * 10 * 2):
        now = 300.0 + i / 2
        sketch.observe("new1" if i % 2 else "new2", {}, now=now)
    assert {hot.key for hot in sketch.top(now=900.0)} == {"new1", "new2"}


def test_a_key_decayed_to_nothing_is_not_shown() -> None:
    sketch = HotKeys(capacity=5, half_life=1)
    sketch.observe("once", {}, now=0.0)
    assert [hot.key for hot in sketch.top(now=9.0)] == ["once"]
    assert sketch.top(now=11.0) == []  # below one request ten half-lives ago


def test_never_more_than_k_keys() -> None:
    sketch = HotKeys(capacity=7, half_life=10)
    for i in range(1000):
        sketch.observe(f"k{i % 50}", {}, now=i)
        assert len(sketch) <= 7
    assert len(sketch) == 7
    assert len(sketch.top(now=1000, n=100)) <= 7
    assert len(sketch.top(now=1000, n=3)) == 3


def test_the_landmark_moves_without_changing_the_rates() -> None:
    """Long runs rescale the counts (weights would overflow): the rates read the same."""
    half_life = 1.0
    moved = HotKeys(capacity=4, half_life=half_life)
    step = RENORMALIZE_AT * half_life / math.log(2) / 3
    for i in range(10):
        moved.observe("a", {}, now=i * step)
        moved.observe("b", {}, now=i * step + 0.5)
    rate = moved.top(now=9 * step + 0.5)
    assert [hot.key for hot in rate] == ["b", "a"]
    assert rate[0].rate == pytest.approx(math.log(2), rel=1e-6)  # one request just now
    assert rate[1].rate == pytest.approx(math.log(2) / math.sqrt(2), rel=1e-6)


def test_two_sketches_merge_into_one_of_k_keys() -> None:
    left, right = HotKeys(capacity=3, half_life=60), HotKeys(capacity=3, half_life=60)
    for _ in range(30):
        left.observe("a", {"n": "a"}, now=0.0)
        right.observe("a", {"n": "a"}, now=0.0)
    for _ in range(20):
        right.observe("b", {"n": "b"}, now=0.0)
    left.observe("c", {"n": "c"}, now=0.0)
    merged = HotKeys(capacity=3, half_life=60)
    merged.merge(json.loads(json.dumps(left.export())))
    merged.merge(json.loads(json.dumps(right.export())))
    lam = math.log(2) / 60
    top = merged.top(now=0.0)
    assert [hot.key for hot in top] == ["a", "b", "c"]
    assert [hot.rate / lam for hot in top] == pytest.approx([60, 20, 1])
    assert top[1].args == {"n": "b"}


def test_a_merge_brings_both_to_one_time_and_keeps_k() -> None:
    early, late = HotKeys(capacity=2, half_life=10), HotKeys(capacity=2, half_life=10)
    for key in ("a", "a", "b"):
        early.observe(key, {}, now=0.0)
    for key in ("c", "c", "c", "d"):
        late.observe(key, {}, now=10.0)  # one half-life later: "a" counts 1 by then
    late.merge(early.export())
    assert len(late) == 2
    lam = math.log(2) / 10
    top = late.top(now=10.0)
    assert top[0].key == "c"
    # "late" was full: "a", missing from it, counts its least count (1) too.
    assert top[1].key == "a"
    assert (top[1].rate / lam, top[1].error / lam) == pytest.approx((2, 1))


def test_a_sketch_that_is_not_one_is_refused() -> None:
    sketch = HotKeys()
    bad: Any
    for bad in (
        [],
        {"capacity": 0, "landmark": 0, "entries": []},
        {"capacity": 2, "landmark": "x", "entries": []},
        {"capacity": 2, "landmark": 0, "entries": [["k", {}, 1]]},
        {"capacity": 2, "landmark": 0, "entries": [["k", {"a": 1}, 1, 0]]},
        {"capacity": 2, "landmark": 0, "entries": [["k", {}, float("nan"), 0]]},
    ):
        with pytest.raises(ValueError):
            sketch.merge(bad)
    assert len(sketch) == 0


def test_the_registry_keeps_one_sketch_per_job_and_none_at_capacity_zero() -> None:
    registry = HotKeysRegistry(capacity=2, half_life=60)
    registry.observe("a", "rfd:a:v1:id=1", {"id": "1"}, now=0.0)
    registry.observe("b", "rfd:b:v1:id=2", {"id": "2"}, now=0.0)
    registry.observe("b", "rfd:b:v1:id=2", {"id": "2"}, now=0.0)
    assert registry.jobs == ["a", "b"]
    assert registry.sizes() == {"a": 1, "b": 1}
    assert registry.top("b", now=0.0)[0].rate == pytest.approx(2 * math.log(2) / 60)
    assert registry.top("c", now=0.0) == []
    off = HotKeysRegistry(capacity=0)
    off.observe("a", "k", {}, now=0.0)
    assert off.jobs == [] and off.sizes() == {}


def test_a_registry_holds_more_keys_of_a_job_when_told_and_never_fewer() -> None:
    registry = HotKeysRegistry(capacity=2, half_life=60)
    for i in range(4):
        registry.observe("a", f"k{i}", {}, now=0.0)
    registry.hold("a", 3)  # a sketch made already grows
    registry.hold("b", 4)  # one not made yet is made that large
    registry.hold("a", 1)
    for i in range(6):
        registry.observe("a", f"k{i}", {}, now=1.0)
        registry.observe("b", f"k{i}", {}, now=1.0)
        registry.observe("c", f"k{i}", {}, now=1.0)
    assert registry.sizes() == {"a": 3, "b": 4, "c": 2}
    copy = registry.copy()
    assert copy.sizes() == {"a": 3, "b": 4, "c": 2}
    off = HotKeysRegistry(capacity=0)
    off.hold("a", 3)
    off.observe("a", "k", {}, now=0.0)
    assert off.sizes() == {}


def test_a_sketch_knows_how_much_of_a_steady_rate_its_rates_read() -> None:
    sketch = HotKeys(capacity=2, half_life=60.0)
    assert sketch.warmed(now=10.0) == 0.0  # nothing seen yet
    sketch.observe("a", {}, now=10.0)
    assert sketch.warmed(now=70.0) == pytest.approx(0.5)
    assert sketch.warmed(now=130.0) == pytest.approx(0.75)
    steady = HotKeys(capacity=2, half_life=60.0)
    for second in range(10, 70):
        steady.observe("a", {}, now=float(second))
    assert steady.top(now=70.0)[0].rate / steady.warmed(70.0) == pytest.approx(1.0, rel=0.02)
    young = HotKeys(capacity=2, half_life=60.0)
    young.observe("b", {}, now=40.0)
    young.merge(sketch.export())  # the older sketch's start counts
    assert young.warmed(now=70.0) == pytest.approx(0.5)
    registry = HotKeysRegistry(capacity=2, half_life=60.0)
    assert registry.warmed("j", now=0.0) == 0.0
    registry.observe("j", "k", {}, now=0.0)
    assert registry.warmed("j", now=60.0) == pytest.approx(0.5)
    assert sketch.warmed(now=10.0 + 6000) == pytest.approx(1.0)


def test_registries_merge_and_refuse_another_half_life() -> None:
    one, two = HotKeysRegistry(capacity=5, half_life=60), HotKeysRegistry(capacity=5, half_life=60)
    one.observe("a", "k1", {}, now=0.0)
    two.observe("a", "k1", {}, now=0.0)
    two.observe("b", "k2", {}, now=0.0)
    merged = one.copy()
    merged.merge(json.loads(json.dumps(two.export())))
    assert merged.sizes() == {"a": 1, "b": 1}
    assert merged.top("a", now=0.0)[0].rate == pytest.approx(2 * math.log(2) / 60)
    assert one.sizes() == {"a": 1}  # the copy is apart
    with pytest.raises(ValueError):
        merged.merge(HotKeysRegistry(capacity=5, half_life=30).export())
    with pytest.raises(ValueError):
        merged.merge({"half_life": 60.0, "jobs": {"a": {"capacity": "x"}}})


streams = st.lists(
    st.tuples(st.integers(0, 30), st.floats(0, 5, allow_nan=False)), min_size=1, max_size=300
)


@settings(max_examples=150, deadline=None)
@given(stream=streams, capacity=st.integers(1, 12))
def test_space_saving_bounds_hold_on_any_stream(
    stream: list[tuple[int, float]], capacity: int
) -> None:
    """
    Counts are never low and at most their error high; every key with more
    than 1/K of the decayed total is kept; never more than K keys.
    """
    half_life = 2.0
    lam = math.log(2) / half_life
    sketch = HotKeys(capacity=capacity, half_life=half_life)
    now = 0.0
    seen: list[tuple[str, float]] = []
    for number, step in stream:
        now += step
        sketch.observe(f"k{number}", {}, now)
        seen.append((f"k{number}", now))
    true: defaultdict[str, float] = defaultdict(float)
    for key, at in seen:
        true[key] += lam * math.exp(-lam * (now - at))
    total = sum(true.values())
    shown = {hot.key: hot for hot in sketch.top(now)}
    assert len(sketch) <= capacity
    for key, hot in shown.items():
        assert hot.rate >= true[key] * (1 - 1e-9) - 1e-12
        assert hot.rate - hot.error <= true[key] * (1 + 1e-9) + 1e-12
        assert hot.error <= total / capacity * (1 + 1e-9) + 1e-12
    for key, rate in true.items():
        if rate > total / capacity * (1 + 1e-9) and rate / lam >= FORGOTTEN:
            assert key in shown


@settings(max_examples=100, deadline=None)
@given(left=streams, right=streams, capacity=st.integers(1, 8))
def test_a_merge_keeps_the_bounds(
    left: list[tuple[int, float]], right: list[tuple[int, float]], capacity: int
) -> None:
    """Two sketches of the same time merged: never low, at most the error high, K keys."""
    lam = math.log(2) / 60
    sketches = [HotKeys(capacity, 60), HotKeys(capacity, 60)]
    true: defaultdict[str, float] = defaultdict(float)
    for sketch, stream in zip(sketches, (left, right), strict=True):
        for number, _ in stream:
            sketch.observe(f"k{number}", {}, now=0.0)
            true[f"k{number}"] += lam
    merged = HotKeys(capacity, 60)
    for sketch in sketches:
        merged.merge(sketch.export())
    assert len(merged) <= capacity
    for hot in merged.top(now=0.0):
        assert hot.rate >= true[hot.key] * (1 - 1e-9)
        assert hot.rate - hot.error <= true[hot.key] * (1 + 1e-9)
