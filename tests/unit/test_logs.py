"""
Log output (refresherd.logs): JSON lines, and flushes that cost no system call
per line yet never leave a line waiting long; on task.Clock.
"""

from __future__ import annotations

import io
import json
import math

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher

from refresherd.logs import FLUSH_INTERVAL, JSONLinesObserver, LazyFlushFile, LogOutput


class CountingFlushes(io.StringIO):
    """A text file that counts its flushes and what had been written at the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def output() -> tuple[LogOutput, CountingFlushes, Clock, Logger]:
    clock = Clock()
    clock.advance(1000)
    out = CountingFlushes()
    file = LazyFlushFile(out, monotonic=clock.seconds)
    # A LazyFlushFile is a text file, but not an IO[str]: refresherd.run.build passes it so too.
    log_output = LogOutput(file, JSONLinesObserver(file), clock)  # type: ignore[arg-type]
    log = Logger(namespace="t", observer=LogPublisher(log_output.observer))
    return log_output, out, clock, log


def test_json_lines_have_the_event_fields_and_survive_what_json_cannot_hold() -> None:
    out = io.StringIO()
    log = Logger(namespace="refresherd.test", observer=LogPublisher(JSONLinesObserver(out)))
    log.info("{what} at {n}", what="hello", n=3, thing=object(), ratio=math.nan)
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert (record["message"], record["what"], record["n"]) == ("hello at 3", "hello", 3)
    assert (record["level"], record["namespace"]) == ("info", "refresherd.test")
    assert record["thing"].startswith("<object object")
    assert record["ratio"] == "nan"


def test_json_lines_leave_out_what_the_legacy_log_bridge_adds() -> None:
    """twistd's bridge adds format, log_legacy (an object's repr), system and isError."""
    out = io.StringIO()
    JSONLinesObserver(out)(
        {
            "log_format": "listening on {address}",
            "log_namespace": "refresherd.test",
            "log_level": LogLevel.info,
            "log_time": 1_800_000_000.0,
            "address": "127.0.0.1:8080",
            "format": "%(log_legacy)s",
            "log_legacy": object(),
            "log_text": "x",
            "log_system": "-",
            "system": "-",
            "isError": 0,
        }
    )
    record = json.loads(out.getvalue())
    assert record.pop("time")
    assert record == {
        "level": "info",
        "namespace": "refresherd.test",
        "message": "listening on 127.0.0.1:8080",
        "address": "127.0.0.1:8080",
    }


def test_info_lines_are_flushed_at_most_once_an_interval() -> None:
    log_output, out, clock, log = output()
    log_output.startService()
    log.info("one")
    assert out.flushes == 1  # the first line: the last flush was long ago
    for i in range(100):
        clock.advance(FLUSH_INTERVAL / 1000)
        log.info("line {i}", i=i)
    assert out.flushes == 1
    clock.advance(FLUSH_INTERVAL)  # the tick
    assert out.flushes == 2 and out.flushed.count("\n") == 101
    log_output.stopService()


def test_a_warning_is_flushed_at_once() -> None:
    log_output, out, clock, log = output()
    log_output.startService()
    log.info("one")
    log.info("two")
    assert "two" not in out.flushed
    log.warn("trouble")
    last = json.loads(out.flushed.splitlines()[-1])
    assert (last["level"], last["message"]) == ("warn", "trouble")
    log_output.stopService()


def test_stopping_flushes_what_waits_and_leaves_no_timer() -> None:
    log_output, out, clock, log = output()
    log_output.startService()
    log.info("first")
    log.info("last")
    assert "last" not in out.flushed
    log_output.stopService()
    assert "last" in out.flushed
    assert clock.getDelayedCalls() == []
