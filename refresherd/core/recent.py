"""
Pure: what each job did lately, for C{GET /v1/status} (docs/admin.md,
"GET /v1/status"): per job, a ring of one bucket per second of the clock over
the last L{WINDOW} seconds, each bucket counting the answers by kind, the
fetch attempts, the failed ones and their durations in the fixed buckets of
L{BOUNDS}; and the job's last L{KEEP_ERRORS} fetch errors.

Memory is bounded by the number of jobs: at most L{WINDOW} buckets of
L{WIDTH} numbers each per job (made only in a second the job was used), and
L{KEEP_ERRORS} messages of at most L{MAX_ERROR_CHARS} characters.

A L{Tally} is the sum of a job's buckets at some time; tallies add up
(the workers' of C{--workers}, merged by the parent) and travel as JSON.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

WINDOW = 60
"""Seconds the rates and quantiles cover."""
KEEP_ERRORS = 10
"""The fetch errors kept per job, the newest."""
MAX_ERROR_CHARS = 200
"""A kept error message is cut to this many characters."""

ANSWERS = ("hit", "stale", "miss", "error")
"""The kinds of answers, in the order of a tally's first numbers."""
ANSWER_OF = {"hit": 0, "stale": 1, "miss": 2, "pending": 2, "error": 3}
"""
Each status C{refresherd_requests_total} counts, as the kind of answer it is:
C{pending} (a miss answered 202 while its fetch runs) is a miss.
"""
_ANSWER_AT = {status: 1 + index for status, index in ANSWER_OF.items()}
"""Where a bucket of the ring counts each status (after the second it counts)."""
BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""
The upper bounds of the fetch durations' buckets (seconds), those of
C{refresherd_fetch_duration_seconds}; one more bucket holds longer ones.
"""
FETCHES, FAILURES, DURATIONS = 4, 5, 6
"""Where a tally holds the fetch attempts, the failed ones, and the first duration bucket."""
WIDTH = DURATIONS + len(BOUNDS) + 1
"""The numbers of a tally."""


@attrs.define(eq=True)
class Tally:
    """
    A job's figures over a window: L{WIDTH} counts (answers by kind, fetch
    attempts, failed ones, durations by bucket), its last errors (time,
    message), newest first, and the fetches running or waiting for a slot.
    """

    counts: list[int] = attrs.field(factory=lambda: [0] * WIDTH)
    errors: list[tuple[float, str]] = attrs.field(factory=list)
    in_flight: int = 0
    queued: int = 0

    def add(self, other: Tally) -> None:
        """Add C{other} to this one: counts summed, errors merged by time."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        if other.errors:
            merged = sorted([*self.errors, *other.errors], key=lambda e: e[0], reverse=True)
            self.errors = merged[:KEEP_ERRORS]
        self.in_flight += other.in_flight
        self.queued += other.queued

    def export(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "errors": [list(error) for error in self.errors],
            "in_flight": self.in_flight,
            "queued": self.queued,
        }

    @classmethod
    def parse(cls, data: Any) -> Tally:
        """A tally from L{export}'s JSON, checked; else L{ValueError}."""
        if not isinstance(data, dict):
            raise ValueError("a tally is not an object")
        counts, errors = data.get("counts"), data.get("errors")
        in_flight, queued = data.get("in_flight", 0), data.get("queued", 0)
        if not (
            isinstance(counts, list)
            and len(counts) == WIDTH
            and set(map(type, counts)) == {int}  # not bool, a subclass
            and min(counts) >= 0
            and _count(in_flight)
            and _count(queued)
        ):
            raise ValueError("a tally's counts are not counts")
        if not (isinstance(errors, list) and len(errors) <= KEEP_ERRORS):
            raise ValueError("a tally's errors are not a list")
        kept = []
        for error in errors:
            if not (
                isinstance(error, list)
                and len(error) == 2
                and isinstance(error[0], int | float)
                and isinstance(error[1], str)
            ):
                raise ValueError("a tally's error is not [time, message]")
            kept.append((float(error[0]), error[1][:MAX_ERROR_CHARS]))
        return cls(list(counts), kept, int(in_flight), int(queued))


def _count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


@attrs.define(eq=False)
class Recent:
    """
    What each of C{jobs} did over the last L{WINDOW} seconds of C{seconds}
    (a clock), counted by whole seconds: a bucket per second, the current
    one included.

    Each job keeps its buckets oldest first, and the sum of those of the
    seconds past (a bucket is added to it when its second is over, and taken
    from it when it leaves the window), so that reading a job's tally costs
    the same however busy the minute was.
    """

    jobs: Iterable[str]
    seconds: Callable[[], float]
    started: float = attrs.field(init=False)
    """When this began counting (the process's start)."""
    _buckets: dict[str, deque[list[int]]] = attrs.field(init=False)
    """Per job, at most L{WINDOW} buckets, oldest first: its second, then L{WIDTH} counts."""
    _sums: dict[str, list[int]] = attrs.field(init=False)
    """Per job, the sum of its buckets but the current second's."""
    _errors: dict[str, deque[tuple[float, str]]] = attrs.field(init=False)
    _second: int = attrs.field(init=False, default=-1)
    _now: dict[str, list[int]] = attrs.field(init=False, factory=dict)
    """The buckets of the current second, L{_second} (every answer is counted in one)."""

    def __attrs_post_init__(self) -> None:
        self.started = self.seconds()
        self._buckets = {job: deque() for job in self.jobs}
        self._sums = {job: [0] * WIDTH for job in self.jobs}
        self._errors = {job: deque(maxlen=KEEP_ERRORS) for job in self.jobs}

    def add_jobs(self, jobs: Iterable[str]) -> None:
        """Count these jobs too from now on (a reload added them); the others are kept."""
        for job in jobs:
            if job not in self._buckets:
                self._buckets[job] = deque()
                self._sums[job] = [0] * WIDTH
                self._errors[job] = deque(maxlen=KEEP_ERRORS)

    def _turn(self, second: int) -> None:
        """A new second: the buckets of the one before go into their jobs' sums."""
        for job, bucket in self._now.items():
            self._sums[job] = [a + b for a, b in zip(self._sums[job], bucket[1:], strict=True)]
        self._second, self._now = second, {}

    def _open(self, job: str, second: int) -> list[int] | None:
        """A new bucket of C{job} for C{second} (None: not one of the jobs)."""
        buckets = self._buckets.get(job)
        if buckets is None:
            return None
        if len(buckets) == WINDOW:  # the oldest has left the window (or the clock went back)
            self._drop(job)
        bucket = self._now[job] = [second] + [0] * WIDTH
        buckets.append(bucket)
        return bucket

    def _drop(self, job: str) -> None:
        """The oldest bucket of C{job} leaves, and its sum."""
        bucket = self._buckets[job].popleft()
        self._sums[job] = [a - b for a, b in zip(self._sums[job], bucket[1:], strict=True)]

    def _bucket(self, job: str) -> list[int] | None:
        """This second's bucket of C{job} (None: not one of the jobs)."""
        second = int(self.seconds())
        if second != self._second:
            self._turn(second)
        return self._now.get(job) or self._open(job, second)

    def answer(self, job: str, status: str) -> None:
        """One answer of C{job} with C{status} (one of L{ANSWER_OF}'s; others are not counted)."""
        # Every answer comes here: _bucket inlined.
        second = int(self.seconds())
        if second != self._second:
            self._turn(second)
        bucket = self._now.get(job) or self._open(job, second)
        index = _ANSWER_AT.get(status)
        if bucket is not None and index is not None:
            bucket[index] += 1

    def fetch(self, job: str, took: float, error: str | None = None) -> None:
        """One fetch attempt of C{job} that took C{took} seconds, failed with C{error} if given."""
        bucket = self._bucket(job)
        if bucket is None:
            return
        bucket[1 + FETCHES] += 1
        bucket[1 + DURATIONS + bisect.bisect_left(BOUNDS, took)] += 1
        if error is not None:
            bucket[1 + FAILURES] += 1
            self._errors[job].appendleft((self.seconds(), error[:MAX_ERROR_CHARS]))

    def tallies(self) -> dict[str, Tally]:
        """Each job's tally over the window now."""
        second = int(self.seconds())
        if second != self._second:
            self._turn(second)
        oldest = second - WINDOW
        tallies = {}
        for job, buckets in self._buckets.items():
            while buckets and buckets[0][0] <= oldest:
                self._drop(job)
            current = self._now.get(job)
            sums = self._sums[job]
            if current is None:
                counts = list(sums)
            else:
                counts = [a + b for a, b in zip(sums, current[1:], strict=True)]
            tallies[job] = Tally(counts, list(self._errors[job]))
        return tallies


def quantile(durations: list[int], q: float) -> float | None:
    """
    The C{q} quantile (0 < q <= 1) of durations counted in the buckets of
    L{BOUNDS} (the last one: longer than every bound), as Prometheus's
    C{histogram_quantile} estimates it: linear within the bucket it falls in
    (from 0 for the first); the last bound when it falls beyond it.  None
    when nothing was counted.
    """
    total = sum(durations)
    if not total:
        return None
    rank, below = q * total, 0
    for index, count in enumerate(durations):
        if count and below + count >= rank:
            if index == len(BOUNDS):
                return float(BOUNDS[-1])
            lower = BOUNDS[index - 1] if index else 0.0
            return lower + (BOUNDS[index] - lower) * (rank - below) / count
        below += count
    return float(BOUNDS[-1])  # not reached: the ranks add up to total


def merge(tallies: Iterable[Mapping[str, Tally]], jobs: Iterable[str]) -> dict[str, Tally]:
    """The sum of C{tallies}, for each of C{jobs} (a job of none of them: an empty tally)."""
    merged = {job: Tally() for job in jobs}
    for each in tallies:
        for job, tally in each.items():
            if job in merged:
                merged[job].add(tally)
    return merged
