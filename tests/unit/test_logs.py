"""
Log output (refresherd.logs): JSON lines, and flushes that cost no system call
per line yet never leave a line waiting long; on task.Clock.
"""

from __future__ import annotations

import io
import json
import math
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.python.logfile import LogFile

from refresherd.http.common import UNMATCHED
from refresherd.logs import (
    ACCESS_LINES,
    ACCESS_NAMESPACE,
    FLUSH_INTERVAL,
    PART_KEPT_SIZE,
    AccessLog,
    JSONLinesObserver,
    LazyFlushFile,
    LogOutput,
    access_log,
    log_file,
    text_observer,
)
from refresherd.run.settings import twistd_log_file
from refresherd.run.workers.logs import WorkerLogObserver, worker_text_observer


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


# The access log: formatted once, written in batches


def access_event(when: float) -> dict[str, object]:
    """The event refresherd.http.common.observe logs through twisted.logger for one request."""
    line = "GET /v1/jobs/{job} 200 0.0012s 127.0.0.1"
    return {
        "log_format": line.replace("{", "{{").replace("}", "}}"),
        "log_namespace": ACCESS_NAMESPACE,
        "log_level": LogLevel.info,
        "log_time": when,
        "method": "GET",
        "route": "/v1/jobs/{job}",
        "code": 200,
        "duration": 0.0012,  # as observe logs it: to four decimals, as the message
        "client": "127.0.0.1",
    }


def observers(json_lines: bool, worker: int | None, out: io.StringIO) -> ILogObserver:
    """The observer refresherd.run.build installs for that output."""
    observer: ILogObserver
    if json_lines:
        observer = JSONLinesObserver(out)
        return observer if worker is None else WorkerLogObserver(worker, observer)
    return text_observer(out) if worker is None else worker_text_observer(worker, out)


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("worker", [None, 2], ids=["single", "worker"])
def test_an_access_line_is_what_the_observer_would_have_written(
    json_lines: bool, worker: int | None
) -> None:
    when = 1_796_300_000.123456
    expected = io.StringIO()
    observers(json_lines, worker, expected)(access_event(when))
    written = io.StringIO()
    access = AccessLog(LazyFlushFile(written), json=json_lines, worker=worker)
    access.write(when, b"GET", "/v1/jobs/{job}", 200, 0.00123456, "127.0.0.1")  # (to 4 decimals)
    access.flush()
    if json_lines:
        assert json.loads(written.getvalue()) == json.loads(expected.getvalue())
    else:
        assert written.getvalue() == expected.getvalue()


def test_access_lines_wait_for_the_tick_and_go_out_in_one_write() -> None:
    log_output, out, clock, _ = output()
    log_output.access = AccessLog(log_output.file)
    log_output.startService()
    assert access_log() is log_output.access
    writes: list[str] = []
    log_output.file.out = WritesRecorded(out, writes)  # type: ignore[assignment]
    for code in (200, 404, 200):
        log_output.access.write(clock.seconds(), b"GET", "/healthz", code, 0.001, "127.0.0.1")
    assert writes == []
    clock.advance(FLUSH_INTERVAL)
    assert len(writes) == 1 and writes[0].count("\n") == 3
    assert out.flushed.count("refresherd.access#info") == 3  # flushed on that tick too
    log_output.stopService()
    assert access_log() is None


def test_access_lines_are_written_before_any_later_event_and_at_stop() -> None:
    log_output, out, clock, log = output()
    log_output.access = AccessLog(log_output.file)
    log_output.startService()
    log_output.access.write(clock.seconds(), b"GET", "/healthz", 200, 0.001, "127.0.0.1")
    log.info("after")
    lines = out.getvalue().splitlines()
    assert "GET /healthz 200" in lines[0] and json.loads(lines[1])["message"] == "after"
    log_output.access.write(clock.seconds(), b"GET", "/healthz", 201, 0.001, "127.0.0.1")
    log_output.stopService()
    assert "GET /healthz 201" in out.flushed


def test_access_lines_past_the_buffer_are_written_at_once() -> None:
    out = io.StringIO()
    access = AccessLog(LazyFlushFile(out))
    for _ in range(ACCESS_LINES - 1):
        access.write(0.0, b"GET", "/healthz", 200, 0.001, "127.0.0.1")
    assert out.getvalue() == ""
    access.write(0.0, b"GET", "/healthz", 200, 0.001, "127.0.0.1")
    assert out.getvalue().count("\n") == ACCESS_LINES
    access.write(0.0, b"GET", "/healthz", 200, 0.001, "127.0.0.1")
    assert out.getvalue().count("\n") == ACCESS_LINES  # (the next batch waits)


def test_an_access_line_with_a_long_method_is_written_at_once_with_those_before() -> None:
    out = io.StringIO()
    access = AccessLog(LazyFlushFile(out))
    access.write(0.0, b"GET", "/healthz", 200, 0.001, "127.0.0.1")
    access.write(0.0, b"M" * (PART_KEPT_SIZE + 1), UNMATCHED, 405, 0.001, "127.0.0.1")
    assert out.getvalue().count("\n") == 2
    access.write(0.0, b"M" * PART_KEPT_SIZE, UNMATCHED, 405, 0.001, "127.0.0.1")
    assert out.getvalue().count("\n") == 2  # (kept)


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_an_access_line_s_client_is_its_address_s_host(json_lines: bool) -> None:
    out = io.StringIO()
    access = AccessLog(LazyFlushFile(out), json=json_lines)
    for client in (IPv4Address("TCP", "10.1.2.3", 5678), IPv6Address("TCP", "::1", 80)):
        access.write(0.0, b"GET", "/healthz", 200, 0.001, client)
    access.write(0.0, b"GET", "/healthz", 200, 0.001, UNIXAddress(b"/run/r.sock"))
    access.flush()
    lines = out.getvalue().splitlines()
    clients = [json.loads(line)["client"] if json_lines else line.split()[-1] for line in lines]
    assert clients == ["10.1.2.3", "::1", str(UNIXAddress(b"/run/r.sock"))]


class WritesRecorded:
    """A text file that records each write, over another."""

    def __init__(self, out: io.StringIO, writes: list[str]) -> None:
        self.out, self.writes = out, writes

    def write(self, text: str) -> int:
        self.writes.append(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def test_the_log_file_is_twistd_s(tmp_path: Path) -> None:
    assert log_file(None) is sys.stdout
    path = tmp_path / "refresherd.log"
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        file = log_file(str(path))
        file.write("a line\n")
        file.flush()
        assert path.read_text() == "a line\n"
        assert (
            isinstance(file, LogFile) and file.rotateLength == LogFile(str(path), ".").rotateLength
        )
    finally:
        signal.signal(signal.SIGUSR1, previous)


class TwistdOptions(dict[str, object]):
    """The plugin's options, with twistd's own as C{parent}."""

    def __init__(self, **twistd: object) -> None:
        super().__init__()
        self.parent = twistd


@pytest.mark.parametrize(
    ("twistd", "expected"),
    [
        ({"nodaemon": True, "logfile": None}, None),
        ({"nodaemon": True, "logfile": "-"}, None),
        ({"nodaemon": True, "logfile": "/var/log/r.log"}, "/var/log/r.log"),
        ({"nodaemon": False, "logfile": None}, "twistd.log"),
    ],
)
def test_the_log_goes_where_twistd_s_would(twistd: dict[str, object], expected: str | None) -> None:
    assert twistd_log_file(TwistdOptions(**twistd)) == expected
    assert twistd_log_file({}) is None


DURATION = "\x00duration\x00"
"""Where a JSON access line's record has its duration: written as its message writes it."""


@settings(max_examples=300)
@given(
    before=st.floats(min_value=-86_400, max_value=4_102_444_800),
    now=st.one_of(
        st.floats(min_value=-86_400, max_value=4_102_444_800),
        st.integers(0, 4_102_444_800).map(lambda second: second - 1e-7),  # rounds up a second
    ),
    method=st.binary(max_size=12),
    route=st.text(max_size=40),
    code=st.integers(100, 599),
    duration=st.one_of(st.floats(), st.integers(0, 10)),
    client=st.text(max_size=80),  # (a client longer than 64 characters: not remembered)
    worker=st.one_of(st.none(), st.integers(1, 64)),
)
def test_a_json_access_line_is_json_dumps_of_its_record_but_for_the_duration(
    before: float,
    now: float,
    method: bytes,
    route: str,
    code: int,
    duration: float,
    client: str,
    worker: int | None,
) -> None:
    """
    Written out by hand for speed, character for character what json.dumps
    writes, but for the duration: a number written as the message writes it
    (seconds to four decimals), where json.dumps would write the float whole.
    """
    written = io.StringIO()
    access = AccessLog(LazyFlushFile(written), json=True, worker=worker)
    access.write(before, method, route, code, duration, client)  # (another second's stamp first)
    access.flush()
    written.truncate(0)
    written.seek(0)
    access.write(now, method, route, code, duration, client)
    access.write(now, method, route, code, duration, client)  # (the second's stamp kept)
    access.flush()
    finite = math.isfinite(duration)
    took = f"{duration:.4f}" if finite else json.dumps(duration)
    record: dict[str, object] = {
        "time": datetime.fromtimestamp(now, UTC).isoformat(),
        "level": "info",
        "namespace": ACCESS_NAMESPACE,
        "message": f"{method.decode('latin-1')} {route} {code} {duration:.4f}s {client}",
        "method": method.decode("latin-1"),
        "route": route,
        "code": code,
        "duration": DURATION,
        "client": client,
    }
    if worker is not None:
        record["worker"] = worker
    line = json.dumps(record).replace(json.dumps(DURATION), took, 1) + "\n"
    assert written.getvalue() == 2 * line
    if finite:
        assert json.loads(line)["duration"] == float(took)


ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=70)
"""Any characters, lone surrogates too (st.text() leaves those out)."""


@settings(max_examples=200)
@given(
    method=st.binary(max_size=12),
    route=st.text(max_size=40),
    code=st.integers(100, 599),
    duration=st.floats(0, 100),
    client=st.text(max_size=80),
    worker=st.one_of(st.none(), st.integers(1, 64)),
)
def test_a_text_access_line_is_what_twistd_s_observer_writes_of_its_event(
    method: bytes, route: str, code: int, duration: float, client: str, worker: int | None
) -> None:
    """Newlines and braces too: twistd's observer follows a newline in a message with a tab."""
    when = 1_796_300_000.25
    text = method.decode("latin-1")
    line = f"{text} {route} {code} {duration:.4f}s {client}"
    event = dict(access_event(when), log_format=line.replace("{", "{{").replace("}", "}}"))
    expected = io.StringIO()
    observers(False, worker, expected)(event)
    written = io.StringIO()
    access = AccessLog(LazyFlushFile(written), worker=worker)
    for _ in range(2):  # (its parts made, then remembered)
        access.write(when, method, route, code, duration, client)
    access.flush()
    assert written.getvalue() == 2 * expected.getvalue()


A_TIME = st.one_of(
    st.floats(min_value=-86_400, max_value=4_102_444_800),
    # Just under a second, where twistd's observer (datetime) rounds up to the next.
    st.integers(-86_400, 4_102_444_800).map(lambda second: math.nextafter(second, -math.inf)),
    st.integers(-86_400, 4_102_444_800).map(lambda second: second - 4e-7),
)


@settings(max_examples=300)
@given(
    batches=st.lists(st.lists(A_TIME, min_size=1, max_size=4), min_size=1, max_size=3),
    worker=st.one_of(st.none(), st.integers(1, 64)),
)
def test_a_text_access_line_s_time_is_the_second_twistd_s_observer_writes(
    batches: list[list[float]], worker: int | None
) -> None:
    """Any time, in any order, within a batch and across batches: rounded as datetime rounds it."""
    expected = io.StringIO()
    written = io.StringIO()
    access = AccessLog(LazyFlushFile(written), worker=worker)
    for batch in batches:
        for when in batch:
            observers(False, worker, expected)(access_event(when))
            access.write(when, b"GET", "/v1/jobs/{job}", 200, 0.00123456, "127.0.0.1")
        access.flush()
    assert written.getvalue() == expected.getvalue()


@settings(max_examples=200)
@given(
    texts=st.lists(st.tuples(st.binary(max_size=70), ANY_TEXT, ANY_TEXT), min_size=1, max_size=4),
    order=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    code=st.sampled_from([200, 304, 404]),
)
def test_json_access_lines_of_requests_in_any_order_with_any_characters_are_their_own(
    texts: list[tuple[bytes, str, str]], order: list[int], code: int
) -> None:
    """The parts remembered for one method, route and client never serve another's line."""
    written = io.StringIO()
    access = AccessLog(LazyFlushFile(written), json=True)
    calls = [texts[i % len(texts)] for i in order]
    for method, route, client in calls:
        access.write(1_796_300_000.5, method, route, code, 0.00123, client)
    access.flush()
    lines = written.getvalue().splitlines()
    assert len(lines) == len(calls)
    for (method, route, client), line in zip(calls, lines, strict=True):
        record = json.loads(line)
        text = method.decode("latin-1")
        assert (record["method"], record["route"], record["client"]) == (text, route, client)
        assert record["message"] == f"{text} {route} {code} 0.0012s {client}"
        assert (record["code"], record["duration"]) == (code, 0.0012)
        assert line.isascii()


def test_a_worker_s_relayed_lines_are_flushed_at_once_after_the_lines_before() -> None:
    log_output, out, clock, log = output()
    log_output.access = AccessLog(log_output.file)
    log_output.startService()
    log.info("first")  # (a file's first line is flushed: the interval starts)
    log_output.access.write(clock.seconds(), b"GET", "/healthz", 200, 0.001, "127.0.0.1")
    log.info("second")
    assert "second" not in out.flushed
    log_output.relay("worker 1 line\n[warn] worker 2 warning\n")
    lines = out.flushed.splitlines()
    assert "refresherd.access" in lines[-4] and "second" in lines[-3]
    assert lines[-2:] == ["worker 1 line", "[warn] worker 2 warning"]
    log_output.stopService()
