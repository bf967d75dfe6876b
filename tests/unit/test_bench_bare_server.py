"""The ceiling of L{bench.bare_server}: one fixed answer per request head, nothing parsed."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from bench.bare_server import MAX_HEAD, Answer, Ceiling, CeilingFactory

HEAD = b"GET /v1/jobs/user/raw?name=hot HTTP/1.1\r\nHost: x\r\n\r\n"


def connected() -> tuple[StringTransport, Ceiling]:
    answers = {b"/": Answer(b"hello", [(b"Content-Length", b"5"), (b"X-A", b"b")])}
    protocol = CeilingFactory(answers).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport, protocol


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"


def test_each_head_gets_the_fixed_answer_pipelined_or_split() -> None:
    transport, protocol = connected()
    protocol.dataReceived(HEAD * 3)
    assert transport.value() == ANSWER * 3
    transport.clear()
    for i in range(len(HEAD)):  # a head arriving byte by byte: answered once, when whole
        protocol.dataReceived(HEAD[i : i + 1])
    protocol.dataReceived(HEAD[:10])
    assert transport.value() == ANSWER
    protocol.dataReceived(HEAD[10:] + HEAD)
    assert transport.value() == ANSWER * 3
    assert transport.connected


def test_a_head_that_never_ends_closes_the_connection() -> None:
    transport, protocol = connected()
    protocol.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_HEAD)
    assert transport.disconnecting and transport.value() == b""


def test_the_ceiling_answers_one_path() -> None:
    answers = {b"/a": Answer(b"", []), b"/b": Answer(b"", [])}
    with pytest.raises(SystemExit):
        CeilingFactory(answers)
