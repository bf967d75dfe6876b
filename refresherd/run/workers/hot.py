"""
The hot keys of C{--workers}: each worker writes its sketches, at most once
a second, to a file of the directory its parent gave it
(C{PROMETHEUS_MULTIPROC_DIR}, where its metrics go too), replacing the file
at once (written aside, then renamed); whoever serves the admin API merges
the files when asked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from refresherd.core.hotkeys import HotKeysRegistry

PREFIX, SUFFIX = "hot-", ".json"
"""A worker's file: C{hot-N.json}, N its number (a restarted worker takes its slot's)."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""A file larger than this is not read (K = 10000 keys of many jobs stays far below)."""


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
    _log: Logger = attrs.field(factory=Logger, init=False)

    def current(self) -> HotKeysRegistry:
        """The hot keys now: L{own}, or a new registry with the workers' files merged in."""
        directory = self.directory()
        if directory is None:
            return self.own
        merged = self.own.copy()
        mine = None if self.worker is None else _name(self.worker)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return merged  # Not made yet, or removed as the parent stops.
        for name in names:
            if not (name.startswith(PREFIX) and name.endswith(SUFFIX)) or name == mine:
                continue
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
                merged.merge(json.loads(data))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                self._log.warn("refresherd: hot keys file {name} skipped: {why}", name=name, why=e)
        return merged

    def write(self) -> None:
        """In a worker, replace its file with its sketches now (an error is logged)."""
        directory = self.directory()
        if directory is None or self.worker is None:
            return
        path = os.path.join(directory, _name(self.worker))
        aside = path + ".tmp"
        try:
            with open(aside, "w", encoding="utf-8") as f:
                json.dump(self.own.export(), f, separators=(",", ":"))
            os.replace(aside, path)
        except OSError as e:
            self._log.warn(
                "refresherd: cannot write the hot keys to {path}: {why}", path=path, why=e
            )

    def sizes(self) -> dict[str, int]:
        """How many keys each job's sketch holds, as L{current} shows them."""
        return self.current().sizes()


def _name(worker: int) -> str:
    return f"{PREFIX}{worker}{SUFFIX}"
