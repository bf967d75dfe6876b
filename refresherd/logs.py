"""
Where log events go: C{--log-format json} (one JSON object per line on
standard output) and the text of twistd, with flushes kept cheap.

twistd sets up logging after the service is made, from an C{ILogObserver}
component of the application if it has one; the services set that component
from a L{LogOutput}.  (twisted.logger's C{jsonFileLogObserver} starts every
record with C{\\x1e}, which is not plain JSON lines.)

Flushing standard output after every line costs a system call per request
once access logging is on.  A L{LogOutput} flushes at most every
L{FLUSH_INTERVAL} seconds, at once for a warning or worse, and on a tick of
that interval so that no line waits longer.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, cast

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

FLUSH_INTERVAL = 0.5
"""Seconds a line written to standard output may wait to be flushed, at most."""

_SKIP = {
    "log_format",
    "log_logger",
    "log_source",
    "log_time",
    "log_level",
    "log_namespace",
    # What twistd's bridge from twisted.python.log adds to every event: its message is in
    # "message" already, and log_legacy is an object whose repr holds a memory address.
    "format",
    "log_legacy",
    "log_text",
    "log_system",
    "system",
    "isError",
}


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out or sys.stdout

    def __call__(self, event: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for name, value in event.items():
            if name in _SKIP or name in record or name.startswith("_"):
                continue
            if name == "log_failure":
                record["failure"] = value.getTraceback()
                continue
            record[name] = value
        # What JSON cannot hold (an object, a NaN) is written as its repr.
        try:
            line = json.dumps(record, default=repr, allow_nan=False)
        except ValueError:
            line = json.dumps({k: _plain(v) for k, v in record.items()}, default=repr)
        self._out.write(line + "\n")
        self._out.flush()


def _plain(value: Any) -> Any:
    """C{value} if JSON holds it as it is, else its repr."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


@attrs.define(eq=False)
class LazyFlushFile:
    """
    A text file whose C{flush} really flushes only when the last real flush
    is L{FLUSH_INTERVAL} seconds old; L{flush_now} always does.
    """

    out: IO[str]
    interval: float = FLUSH_INTERVAL
    monotonic: Callable[[], float] = time.monotonic
    _last: float = attrs.field(default=0.0, init=False)

    def write(self, text: str) -> int:
        return self.out.write(text)

    def flush(self) -> None:
        if self.monotonic() - self._last >= self.interval:
            self.flush_now()

    def flush_now(self) -> None:
        self.out.flush()
        self._last = self.monotonic()


@attrs.define(eq=False)
class LogOutput(Service):
    """
    The observer the application logs to, over a L{LazyFlushFile}: a warning
    or worse is flushed at once, and a tick every L{FLUSH_INTERVAL} seconds
    while the service runs (and its stop) flushes whatever waits.
    """

    file: LazyFlushFile
    writer: Callable[[dict[str, Any]], None]
    """The observer that formats events and writes them to L{file}."""
    clock: IReactorTime
    _tick: LoopingCall | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    @property
    def observer(self) -> ILogObserver:
        return cast(ILogObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        self.writer(event)
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            self.file.flush_now()

    def startService(self) -> None:
        super().startService()
        self._tick = LoopingCall(self.file.flush_now)
        self._tick.clock = self.clock
        self._tick.start(self.file.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._tick is not None and self._tick.running:
            self._tick.stop()
        self.file.flush_now()


def text_observer(out: IO[str] | LazyFlushFile) -> ILogObserver:
    """twistd's own text format."""
    observer: ILogObserver = FileLogObserver(out, formatEventAsClassicLogText)  # type: ignore[arg-type]
    return observer
