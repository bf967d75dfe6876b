"""
The ceiling of L{bench.bare_server} C{fast} on real sockets: read through a
L{ReadMux}, written to the socket at once, one fixed answer per request head.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bench.bare_server import Answer, CeilingFactory, FastCeiling
from refresherd.http.reads import ReadMux

pytestmark = pytest.mark.integration
reactor: Any = _reactor
HEAD = b"GET /v1/jobs/user/raw?name=hot HTTP/1.1\r\nHost: x\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class FastCeilingTests(TestCase):
    async def test_each_head_is_answered_through_the_mux(self) -> None:
        mux = ReadMux(reactor)
        factory = CeilingFactory({b"/": Answer(b"hello", [(b"Content-Length", b"5")])}, mux)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.socket()
        client.setblocking(False)
        self.addCleanup(client.close)
        client.connect_ex(("127.0.0.1", port.getHost().port))
        got = bytearray()
        sent = False
        for _ in range(1000):
            await deferLater(reactor, 0.005)
            if not sent and mux.watching():
                client.sendall(HEAD + HEAD[:10])
                client.sendall(HEAD[10:] + HEAD)
                sent = True
            try:
                got += client.recv(65536)
            except BlockingIOError:
                pass
            if len(got) >= 3 * len(ANSWER):
                break
        self.assertEqual(bytes(got), ANSWER * 3)
        self.assertEqual(mux.watching(), 1)
        self.assertIn(mux, reactor.getReaders())
        self.assertIsInstance(factory.buildProtocol(None), FastCeiling)
