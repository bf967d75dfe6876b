"""What a worker logs: each event with the worker's number."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO

import attrs
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEventAsClassicLogText
from zope.interface import implementer


@implementer(ILogObserver)
@attrs.define
class WorkerLogObserver:
    """
    Adds the worker's number to every event (the C{worker} field) before
    C{observer} writes it.
    """

    worker: int
    observer: Callable[[LogEvent], None]

    def __call__(self, event: LogEvent) -> None:
        self.observer({**event, "worker": self.worker})


def worker_text_observer(worker: int, out: IO[str] | None = None) -> ILogObserver:
    """
    twistd's text format with the worker named in the system field:
    C{2026-01-01T00:00:00+0000 [worker 1 refresherd.run.services#info] message}.
    """

    def format_event(event: LogEvent) -> str | None:
        level = getattr(event.get("log_level"), "name", "-")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
        return formatEventAsClassicLogText({**event, "log_system": f"worker {worker} {system}"})

    observer: ILogObserver = FileLogObserver(out or sys.stdout, format_event)
    return observer
