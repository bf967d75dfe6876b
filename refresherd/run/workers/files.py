"""
The files through which the workers of C{--workers} tell whoever serves the
admin API what they saw (their hot keys, their recent tallies): one JSON
file per worker and kind in the directory the parent gave them
(C{PROMETHEUS_MULTIPROC_DIR}), named C{{prefix}N.json}, N the worker's
number (a restarted worker takes its slot's); each replaced at once (written
aside, then renamed) and read whole, bounded in size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.logger import Logger

T = TypeVar("T")

SUFFIX = ".json"


@attrs.frozen
class WorkerFiles:
    """The files of one kind (C{what}, for messages), each at most C{max_bytes}."""

    prefix: str
    what: str
    max_bytes: int
    _log: Logger = attrs.field(factory=Logger, eq=False)

    def name(self, worker: int) -> str:
        return f"{self.prefix}{worker}{SUFFIX}"

    def read(self, directory: str, parse: Callable[[Any], T], skip: int | None = None) -> list[T]:
        """
        C{parse} of each file in C{directory} but worker C{skip}'s; a file
        too large, not JSON, or that C{parse} refuses (L{ValueError}) is
        skipped with a warning; a directory not made yet, or removed as the
        parent stops, has none.
        """
        mine = None if skip is None else self.name(skip)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return []
        found = []
        for name in names:
            if not (name.startswith(self.prefix) and name.endswith(SUFFIX)) or name == mine:
                continue
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    data = f.read(self.max_bytes + 1)
                if len(data) > self.max_bytes:
                    raise ValueError(f"larger than {self.max_bytes} bytes")
                found.append(parse(json.loads(data)))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                self._log.warn(
                    "refresherd: {what} file {name} skipped: {why}",
                    what=self.what,
                    name=name,
                    why=e,
                )
        return found

    def write(self, directory: str, worker: int, document: Any) -> None:
        """Replace worker C{worker}'s file with C{document} (an error is logged)."""
        path = os.path.join(directory, self.name(worker))
        aside = path + ".tmp"
        try:
            with open(aside, "w", encoding="utf-8") as f:
                f.write(json.dumps(document, separators=(",", ":")))
            os.replace(aside, path)
        except OSError as e:
            self._log.warn(
                "refresherd: cannot write the {what} to {path}: {why}",
                what=self.what,
                path=path,
                why=e,
            )
