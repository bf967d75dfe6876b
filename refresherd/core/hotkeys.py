"""
Hot keys: per job, a bounded sketch of the keys requested most lately
(docs/admin.md, "Hot keys").  Pure: no I/O, no Twisted; the time is a
parameter.

Each job's sketch is Space-Saving (Metwally, Agrawal and El Abbadi, 2005)
with forward decay (Cormode, Shkapenyuk, Srivastava and Xu, 2009):

- A request at time t weighs C{exp(λ (t - landmark))}, with C{λ = ln 2 /
  half_life}; a key's count is the sum of its requests' weights, and its
  rate at time T is C{λ · count · exp(-λ (T - landmark))}: the requests of
  the last half-lives, each worth half as much per half-life of age.  A key
  requested steadily at r per second reads r; once it stops, its rate halves
  every half-life.  Old requests lose weight without any work per key: only
  when the weights grow large does the landmark move (every
  L{RENORMALIZE_AT} / λ seconds, 92 minutes for a half-life of 60 s), which
  rescales the K counts once.
- At most K keys are kept.  A key not kept replaces the one of least count,
  and starts from that count (its C{error}): so a count never
  underestimates, and overestimates by at most its C{error}, itself at most
  the least count, at most 1/K of the sum of all counts.  Every key whose
  true share of the job's (decayed) requests exceeds 1/K is kept, and its rate
  is over by at most 1/K of the job's rate.
- The least count is found with a heap holding one entry per kept key, its
  count when pushed: a count that grew since is pushed again when it reaches
  the top (counts only grow between landmark moves).  An observation of a
  kept key is one dictionary lookup and one addition; one of another key
  is O(log K), amortised.

Sketches merge (C{export}, C{merge}): counts of the same key add up, and a
key missing from a full sketch is counted with that sketch's least count (it
may have been there): the bounds above hold for the merge, at K keys.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any

import attrs

DEFAULT_CAPACITY = 100
"""K: the keys a job's sketch keeps (C{[server] hot_keys})."""
DEFAULT_HALF_LIFE = 60.0
"""Seconds after which a request counts half (C{[server] hot_half_life})."""
RENORMALIZE_AT = 64.0
"""λ (t - landmark) past which the landmark moves to t: weights stay below e^64."""
FORGOTTEN = 2.0**-10
"""A decayed count below this (one request ten half-lives ago) is forgotten."""

_exp = math.exp


@attrs.frozen
class Hot:
    """
    One hot key: its arguments (to refresh it with) and its rate, in requests
    per second, decayed; an estimate that is never low and at most C{error}
    high.
    """

    key: str
    args: Mapping[str, str]
    rate: float
    error: float


class HotKeys:
    """
    The sketch of one job: at most C{capacity} keys, each with its arguments,
    its count and the most its count may be over (see the module).
    """

    __slots__ = ("capacity", "half_life", "_lambda", "_landmark", "_started", "_entries", "_heap")

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, half_life: float = DEFAULT_HALF_LIFE
    ) -> None:
        if capacity < 1 or not half_life > 0 or not math.isfinite(half_life):
            raise ValueError("a sketch needs a capacity of at least 1 and a half-life above 0")
        self.capacity = capacity
        self.half_life = half_life
        self._lambda = math.log(2) / half_life
        self._landmark: float | None = None
        self._started: float | None = None
        """The first request's time (or, after a merge, the earliest landmark)."""
        self._entries: dict[str, list[Any]] = {}
        """key -> [count, error, args]: counts in weights of the landmark."""
        self._heap: list[tuple[float, str]] = []
        """(count when pushed, key), one per key kept."""

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, key: str, args: Mapping[str, str], now: float) -> None:
        """One request of C{key} with C{args} at C{now} (seconds)."""
        landmark = self._landmark
        if landmark is None:
            self._landmark = self._started = landmark = now
        x = self._lambda * (now - landmark)
        if x > RENORMALIZE_AT:
            self._move_landmark(now)
            x = 0.0
        weight = _exp(x)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:  # Nearly every request of a hot key.
            entry[0] += weight
            return
        heap = self._heap
        if len(entries) < self.capacity:
            entries[key] = [weight, 0.0, args]
            heapq.heappush(heap, (weight, key))
            return
        least, victim = heap[0]
        current = entries[victim][0]
        while current != least:  # Its count grew since it was pushed.
            heapq.heapreplace(heap, (current, victim))
            least, victim = heap[0]
            current = entries[victim][0]
        del entries[victim]
        count = least + weight
        entries[key] = [count, least, args]
        heapq.heapreplace(heap, (count, key))

    def top(self, now: float, n: int | None = None) -> list[Hot]:
        """The C{n} (default: all) hottest keys at C{now}, by rate, highest first."""
        if self._landmark is None:
            return []
        decay = _exp(-self._lambda * (now - self._landmark))
        floor = FORGOTTEN / decay if decay > 0 else math.inf
        kept = [(e[0], key, e) for key, e in self._entries.items() if e[0] >= floor]
        wanted = len(kept) if n is None else n
        scale = self._lambda * decay
        return [
            Hot(key, e[2], count * scale, e[1] * scale)
            for count, key, e in heapq.nlargest(wanted, kept)
        ]

    def warmed(self, now: float) -> float:
        """
        The share of a steady rate that its (decayed) rate reads at C{now}: the
        requests before the sketch's first are not counted, so a key asked at
        r per second since then reads r × (1 - 2^(-age / half-life)).
        """
        if self._started is None:
            return 0.0
        return -math.expm1(-self._lambda * max(0.0, now - self._started))

    def _move_landmark(self, now: float) -> None:
        """Rescale every count to the landmark C{now}, forgetting those decayed to nothing."""
        assert self._landmark is not None
        decay = _exp(-self._lambda * (now - self._landmark))
        self._landmark = now
        entries = {}
        for key, (count, error, args) in self._entries.items():
            if count * decay >= FORGOTTEN:
                entries[key] = [count * decay, error * decay, args]
        self._set(entries)

    def _set(self, entries: dict[str, list[Any]]) -> None:
        self._entries = entries
        self._heap = [(e[0], key) for key, e in entries.items()]
        heapq.heapify(self._heap)

    def export(self) -> dict[str, Any]:
        """The sketch as JSON-ready data, for L{merge}."""
        return {
            "capacity": self.capacity,
            "landmark": self._landmark,
            "entries": [[key, dict(e[2]), e[0], e[1]] for key, e in self._entries.items()],
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        """
        Add the sketch C{state} (L{export}ed by one of the same half-life): the
        counts of a key add up; a key missing from a full sketch counts that
        sketch's least count.  L{ValueError} if C{state} is not such data.
        """
        capacity, landmark, theirs = _parse_sketch(state)
        if landmark is None or not theirs:
            return
        # Their landmark is their first request or later: their age is never overstated.
        self._started = landmark if self._started is None else min(self._started, landmark)
        if self._landmark is None:
            self._landmark = landmark
        elif landmark > self._landmark:
            self._move_landmark(landmark)
        scale = _exp(-self._lambda * (self._landmark - landmark))
        scaled: dict[str, list[Any]] = {
            key: [c * scale, e * scale, args] for key, (c, e, args) in theirs.items()
        }
        ours = self._entries
        our_floor = min(e[0] for e in ours.values()) if len(ours) >= self.capacity else 0.0
        their_floor = min(e[0] for e in scaled.values()) if len(scaled) >= capacity else 0.0
        merged = {}
        for key in ours.keys() | scaled.keys():
            a, b = ours.get(key), scaled.get(key)
            count = (a[0] if a else our_floor) + (b[0] if b else their_floor)
            error = (a[1] if a else our_floor) + (b[1] if b else their_floor)
            merged[key] = [count, error, (a or b)[2]]  # type: ignore[index]
        if len(merged) > self.capacity:
            kept = heapq.nlargest(self.capacity, merged.items(), key=_count)
            merged = dict(kept)
        self._set(merged)


def _count(item: tuple[str, list[Any]]) -> float:
    count: float = item[1][0]
    return count


def _parse_sketch(
    state: Mapping[str, Any],
) -> tuple[int, float | None, dict[str, tuple[float, float, dict[str, str]]]]:
    """The capacity, landmark and entries of an exported sketch; L{ValueError} if malformed."""
    if not isinstance(state, Mapping):
        raise ValueError("a sketch must be an object")
    capacity, landmark, entries = state.get("capacity"), state.get("landmark"), state.get("entries")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError("a sketch's capacity must be a positive integer")
    if landmark is not None and not _finite(landmark):
        raise ValueError("a sketch's landmark must be a number")
    if not isinstance(entries, list):
        raise ValueError("a sketch's entries must be an array")
    parsed = {}
    for item in entries:
        if not (isinstance(item, list) and len(item) == 4):
            raise ValueError("a sketch's entry must be [key, args, count, error]")
        key, args, count, error = item
        if not isinstance(key, str) or not _finite(count) or not _finite(error):
            raise ValueError("a sketch's entry must be [key, args, count, error]")
        if not isinstance(args, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in args.items()
        ):
            raise ValueError("a sketch's entry's args must map names to strings")
        parsed[key] = (float(count), float(error), args)
    return capacity, landmark, parsed


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@attrs.define
class HotKeysRegistry:
    """
    The sketches of a process, one per job (made on the job's first request).
    A C{capacity} of 0 keeps none: L{observe} then does nothing.
    """

    capacity: int = DEFAULT_CAPACITY
    half_life: float = DEFAULT_HALF_LIFE
    _sketches: dict[str, HotKeys] = attrs.field(factory=dict, init=False)
    _held: dict[str, int] = attrs.field(factory=dict, init=False)
    """The jobs whose sketch holds more than C{capacity} keys (L{hold}), and how many."""

    def observe(self, job: str, key: str, args: Mapping[str, str], now: float) -> None:
        """One request of C{job}'s C{key} with C{args} at C{now}."""
        sketch = self._sketches.get(job)
        if sketch is None:
            if not self.capacity:
                return
            sketch = self._sketches[job] = HotKeys(self._capacity(job), self.half_life)
        sketch.observe(key, args, now)

    def _capacity(self, job: str) -> int:
        return max(self.capacity, self._held.get(job, 0))

    def hold(self, job: str, n: int) -> None:
        """
        Let C{job}'s sketch hold at least C{n} keys from now on (refresh-ahead
        needs more than are shown); nothing with a C{capacity} of 0.
        """
        if not self.capacity or n <= self._capacity(job):
            return
        self._held[job] = n
        sketch = self._sketches.get(job)
        if sketch is not None:
            sketch.capacity = n

    def top(self, job: str, now: float, n: int | None = None) -> list[Hot]:
        """The C{n} (default: all) hottest keys of C{job} at C{now}, highest rate first."""
        sketch = self._sketches.get(job)
        return [] if sketch is None else sketch.top(now, n)

    def warmed(self, job: str, now: float) -> float:
        """The share of a steady rate that C{job}'s sketch reads at C{now} (L{HotKeys.warmed})."""
        sketch = self._sketches.get(job)
        return 0.0 if sketch is None else sketch.warmed(now)

    @property
    def jobs(self) -> list[str]:
        """The jobs with a sketch (requested at least once), sorted."""
        return sorted(self._sketches)

    def sizes(self) -> dict[str, int]:
        """How many keys each job's sketch holds."""
        return {job: len(sketch) for job, sketch in self._sketches.items()}

    def export(self) -> dict[str, Any]:
        """Every sketch as JSON-ready data, for L{merge}."""
        return {
            "half_life": self.half_life,
            "jobs": {job: sketch.export() for job, sketch in self._sketches.items()},
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        """
        Add the sketches of C{state} (another registry's L{export}, of the same
        half-life); L{ValueError}, and nothing merged, if C{state} is not such data.
        """
        if not isinstance(state, Mapping) or not isinstance(state.get("jobs"), Mapping):
            raise ValueError("hot keys must be an object with jobs")
        if state.get("half_life") != self.half_life:
            raise ValueError(
                f"hot keys of half-life {state.get('half_life')!r}, not {self.half_life!r}"
            )
        jobs = state["jobs"]
        for job, sketch in jobs.items():
            if not isinstance(job, str):
                raise ValueError("a job's name must be a string")
            _parse_sketch(sketch)
        if not self.capacity:
            return
        for job, sketch in jobs.items():
            if job not in self._sketches:
                self._sketches[job] = HotKeys(self._capacity(job), self.half_life)
            self._sketches[job].merge(sketch)

    def copy(self) -> HotKeysRegistry:
        """A registry of the same sketches, apart from this one (to merge others into)."""
        copy = HotKeysRegistry(self.capacity, self.half_life)
        copy._held = dict(self._held)
        copy.merge(self.export())
        return copy
