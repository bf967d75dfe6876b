"""
What each job did lately (C{GET /v1/status}) with C{--workers}: as for the
hot keys (L{refresherd.run.workers.hot}), each worker writes its tallies, at
most once a second, to a file of the directory its parent gave it, replacing
the file at once (written aside, then renamed); whoever serves the admin API
adds the files up when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from refresherd.core.recent import WINDOW, Tally, merge
from refresherd.run.workers.files import WorkerFiles

FILES = WorkerFiles("status-", "status", 16 * 1024 * 1024)
"""A worker's file: C{status-N.json}; one larger than 16 MiB is not read (a tally is a few
hundred bytes per job)."""
LIVE_FOR = 5.0
"""
A file older than this (seconds) is a worker's that no longer writes (killed,
its slot not filled yet): its fetches running and waiting no longer count.
"""


@attrs.define(eq=False)
class RecentView:
    """
    The tallies a process shows: its own (C{own}, with its fetches running
    now), plus those the workers wrote to C{directory()} (the parent of
    C{--workers}; a worker, whose own file is skipped for its live tallies),
    or its own alone (no directory).
    """

    own: Callable[[], Mapping[str, Tally]]
    seconds: Callable[[], float]
    directory: Callable[[], str | None] = lambda: None
    worker: int | None = None
    """In a worker, its number: L{write} writes its file."""

    def current(self) -> dict[str, Tally]:
        """Each job's tally now: L{own}, with the workers' files added when there is a directory."""
        own = self.own()
        directory = self.directory()
        if directory is None:
            return dict(own)
        now = self.seconds()
        found = FILES.read(directory, lambda document: _parse(document, now), skip=self.worker)
        return merge([own, *found], own)

    def write(self) -> None:
        """In a worker, replace its file with its tallies now (an error is logged)."""
        directory = self.directory()
        if directory is None or self.worker is None:
            return
        document = {
            "written": self.seconds(),
            "jobs": {
                job: tally.export()
                for job, tally in self.own().items()
                if tally != Tally()  # the idle jobs of a worker: nothing to add
            },
        }
        FILES.write(directory, self.worker, document)


def _parse(document: Any, now: float) -> dict[str, Tally]:
    """
    The tallies of a worker's file at C{now}: its counts only if written
    within the window, its fetches running and waiting only if within
    L{LIVE_FOR} (its errors whenever); else L{ValueError}.
    """
    if not isinstance(document, dict):
        raise ValueError("not an object")
    written, jobs = document.get("written"), document.get("jobs")
    if not isinstance(written, int | float) or not isinstance(jobs, dict):
        raise ValueError("not a status file")
    tallies = {}
    for job, data in jobs.items():
        tally = Tally.parse(data)
        if now - written > WINDOW:
            tally.counts = Tally().counts
        if now - written > LIVE_FOR:
            tally.in_flight = tally.queued = 0
        tallies[job] = tally
    return tallies
