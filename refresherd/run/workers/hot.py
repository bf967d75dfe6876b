"""
The hot keys of C{--workers}: each worker writes its sketches, at most once
a second, to a file of the directory its parent gave it
(C{PROMETHEUS_MULTIPROC_DIR}, where its metrics go too), replacing the file
at once (written aside, then renamed); whoever serves the admin API merges
the files when asked.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.run.workers.files import WorkerFiles

FILES = WorkerFiles("hot-", "hot keys", 64 * 1024 * 1024)
"""A worker's file: C{hot-N.json}; one larger than 64 MiB is not read (K = 10000 keys of many
jobs stays far below)."""


@attrs.define(eq=False)
class HotKeysView:
    """
    The hot keys a process shows (C{GET /v1/hot}, C{refresherd_hot_keys}):
    its own, merged with those the workers wrote to C{directory()} (the
    parent of C{--workers}; a worker, whose own file is skipped for its live
    sketches), or its own alone (no directory).
    """

    own: HotKeysRegistry
    directory: Callable[[], str | None] = lambda: None
    worker: int | None = None
    """In a worker, its number: L{write} writes its file."""

    def current(self) -> HotKeysRegistry:
        """The hot keys now: L{own}, or a new registry with the workers' files merged in."""
        directory = self.directory()
        if directory is None:
            return self.own
        merged = self.own.copy()
        FILES.read(directory, merged.merge, skip=self.worker)
        return merged

    def write(self) -> None:
        """In a worker, replace its file with its sketches now (an error is logged)."""
        directory = self.directory()
        if directory is not None and self.worker is not None:
            FILES.write(directory, self.worker, self.own.export())

    def sizes(self) -> dict[str, int]:
        """How many keys each job's sketch holds, as L{current} shows them."""
        return self.current().sizes()
