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

The access log (C{[server] access_log}) does not go through twisted.logger
at all while a L{LogOutput} runs: an L{AccessLog} keeps what each line
needs (as nginx's C{access_log ... buffer=}), and formats the lines, each
exactly as the observer would have, and writes them in one piece when
L{ACCESS_LINES} wait, on the tick, before any other event is written (so the
file keeps their order), and at stop.
"""

from __future__ import annotations

import calendar
import json
import math
import signal
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
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

FLUSH_INTERVAL = 0.5
"""Seconds a line written to standard output may wait to be flushed, at most."""
ACCESS_NAMESPACE = "refresherd.access"
ACCESS_LINES = 512
"""Access log lines kept before they are written."""

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


PARTS_KEPT, PART_KEPT_SIZE = 1024, 64
"""
How many lines' parts (by method, route, status and client address)
L{AccessLog} keeps, and how long their strings may be.
"""
Waiting = tuple[float, bytes, str, int, float, object]
"""What a request leaves for its access line (L{AccessLog.write}'s arguments)."""
_WELL_WITHIN = 0.999999
"""
How far into its second a time is shown as that second whatever its sign:
past it, datetime may round the time up to the next (to the microsecond).
"""
_DIGITS = tuple(f"{number:03d}" for number in range(1000))
"""Three digits of a microsecond, by their number."""


@attrs.define(eq=False)
class AccessLog:
    """
    Access log lines, formatted as the process's observer would format their
    events (twistd's text, C{--log-format json}, a worker's; the duration as
    the message writes it, to four decimals), and written to L{file} in
    batches.

    A request only leaves what its line needs (L{write}); the lines are
    formatted together when they are written, in one loop whose code stays
    warm, which under load costs a fraction of formatting each amid the
    requests.
    """

    file: LazyFlushFile
    json: bool = False
    worker: int | None = None
    _waiting: list[Waiting] = attrs.field(factory=list, init=False)
    _second: float = attrs.field(default=math.nan, init=False)
    """The second the time stamp (C{_stamp}) was made for."""
    _stamp: str = attrs.field(default="", init=False)
    _parts: dict[tuple[bytes, str, int, str], tuple[str, ...]] = attrs.field(
        factory=dict, init=False
    )

    def write(
        self, when: float, method: bytes, route: str, code: int, duration: float, client: object
    ) -> None:
        """
        One request's line: when it was answered, its method, route template,
        status, duration and client (an address, whose host is written, or a
        string).
        """
        waiting = self._waiting
        waiting.append((when, method, route, code, duration, client))
        # (A long method, which only twisted.web's listeners let through, is not
        # kept: what waits stays small however long the request lines.)
        if len(waiting) >= ACCESS_LINES or len(method) > PART_KEPT_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting (the file flushes them as it flushes)."""
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            lines = self._json_lines(waiting) if self.json else self._text_lines(waiting)
            self.file.write("".join(lines))

    def _text_lines(self, waiting: list[Waiting]) -> list[str]:
        """The lines as twistd's text observer writes their events."""
        system = f"{ACCESS_NAMESPACE}#info"
        if self.worker is not None:
            system = f"worker {self.worker} {system}"
        lines: list[str] = []
        add = lines.append
        parts_of = self._parts.get
        second, stamp = self._second, self._stamp
        low, high = second, second + _WELL_WITHIN
        for when, method, route, code, duration, client in waiting:
            if not low <= when < high:  # (else: the same second, far from its end)
                whole = _shown_second(when)
                if whole != second:
                    second = whole
                    stamp = f"{formatTime(second)} [{system}] "
                low, high = second, second + _WELL_WITHIN
            host = getattr(client, "host", None) or str(client)
            key = (method, route, code, host)
            parts = parts_of(key) or self._new_parts(*key)
            add(f"{stamp}{parts[0]}{duration:.4f}{parts[1]}")
        self._second, self._stamp = second, stamp
        return lines

    def _json_lines(self, waiting: list[Waiting]) -> list[str]:
        """
        The lines' records as C{json.dumps} writes them, but for C{duration},
        written as the message writes it (seconds to four decimals, a JSON
        number): the same characters for a fraction of the cost.
        """
        lines: list[str] = []
        add = lines.append
        parts_of = self._parts.get
        second, stamp = self._second, self._stamp
        for when, method, route, code, duration, client in waiting:
            # The second and microsecond as datetime.fromtimestamp rounds them (half to even).
            part, whole = math.modf(when)
            micro = round(part * 1e6)
            if micro >= 1_000_000:
                whole, micro = whole + 1.0, micro - 1_000_000
            elif micro < 0:
                whole, micro = whole - 1.0, micro + 1_000_000
            if whole != second:
                second = whole
                stamp = datetime.fromtimestamp(whole, UTC).isoformat()[: -len("+00:00")]
            took = f"{duration:.4f}"
            number = took
            if not math.isfinite(duration):
                number = json.dumps(duration)  # (NaN, Infinity: as json.dumps writes them)
            host = getattr(client, "host", None) or str(client)
            key = (method, route, code, host)
            parts = parts_of(key) or self._new_parts(*key)
            if micro:
                fraction = f".{_DIGITS[micro // 1000]}{_DIGITS[micro % 1000]}"
                add(f'{{"time": "{stamp}{fraction}{parts[0]}{took}{parts[1]}{number}{parts[2]}')
            else:
                add(f'{{"time": "{stamp}{parts[0]}{took}{parts[1]}{number}{parts[2]}')
        self._second, self._stamp = second, stamp
        return lines

    def _new_parts(self, method: bytes, route: str, code: int, client: str) -> tuple[str, ...]:
        """
        What a line of this request holds but for its time and duration: as
        text, what comes before the duration and after it; as JSON, what comes
        between the time, the duration in the message and the duration, and
        after. Remembered (at most L{PARTS_KEPT}) if its strings are short.
        """
        text = method.decode("latin-1")
        parts: tuple[str, ...]
        if self.json:
            m, r, c = (_escaped(each)[1:-1] for each in (text, route, client))
            worker = "" if self.worker is None else f', "worker": {self.worker}'
            parts = (
                f'+00:00", "level": "info", "namespace": "{ACCESS_NAMESPACE}", '
                f'"message": "{m} {r} {code:d} ',
                f's {c}", "method": "{m}", "route": "{r}", "code": {code:d}, "duration": ',
                f', "client": "{c}"{worker}}}\n',
            )
        else:  # (a newline in the message is followed by a tab, as twistd writes it)
            before, after = f"{text} {route} {code} ", f"s {client}"
            parts = (before.replace("\n", "\n\t"), after.replace("\n", "\n\t") + "\n")
        if max(len(method), len(route), len(client)) <= PART_KEPT_SIZE:
            if len(self._parts) >= PARTS_KEPT:
                self._parts.clear()
            self._parts[method, route, code, client] = parts
        return parts


def _shown_second(when: float) -> int:
    """The second a time stamp of C{when} shows: datetime rounds C{when} to the microsecond."""
    return calendar.timegm(datetime.fromtimestamp(when, UTC).timetuple())


_escaped: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""A string as C{json.dumps} writes it (quoted, escaped, ASCII)."""

_running: list[AccessLog] = []
"""The access log of the running L{LogOutput}, if it has one."""


def access_log() -> AccessLog | None:
    """Where access log lines go while a L{LogOutput} runs; None: through twisted.logger."""
    return _running[0] if _running else None


def log_file(path: str | None) -> IO[str]:
    """
    Standard output, or the file at C{path} as twistd opens its C{--logfile}:
    a L{LogFile} rotated by size, and on SIGUSR1 (unless something else
    handles it).
    """
    if path is None:
        return sys.stdout
    file = LogFile.fromFullPath(path)
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(number: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return cast(IO[str], file)


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
    access: AccessLog | None = None
    """Where access log lines go, in batches, while it runs."""
    _tick: LoopingCall | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    @property
    def observer(self) -> ILogObserver:
        return cast(ILogObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if self.access is not None:
            self.access.flush()
        self.writer(event)
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            self.file.flush_now()

    def relay(self, lines: str) -> None:
        """
        Whole lines another process wrote (a worker's), written as they are and
        flushed at once: that process already held them its while (and flushed
        a warning at once), so they wait no more here.
        """
        if self.access is not None:
            self.access.flush()  # (the lines before, first)
        self.file.write(lines)
        self.file.flush_now()

    def startService(self) -> None:
        super().startService()
        if self.access is not None:
            _running[:] = [self.access]
        self._tick = LoopingCall(self._flush)
        self._tick.clock = self.clock
        self._tick.start(self.file.interval, now=False)

    def _flush(self) -> None:
        if self.access is not None:
            self.access.flush()
        self.file.flush_now()

    def stopService(self) -> None:
        super().stopService()
        if self._tick is not None and self._tick.running:
            self._tick.stop()
        if self.access is not None and self.access in _running:
            _running.clear()
        self._flush()


def text_observer(out: IO[str] | LazyFlushFile) -> ILogObserver:
    """twistd's own text format."""
    observer: ILogObserver = FileLogObserver(out, formatEventAsClassicLogText)  # type: ignore[arg-type]
    return observer
