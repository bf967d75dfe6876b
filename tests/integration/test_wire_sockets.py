"""
The public listener's channel (L{refresherd.http.wire}) on real TCP sockets,
read through its L{refresherd.http.reads.ReadMux}: the answers made in one
turn are written once it is done, together, and nothing overtakes them (an
answer twisted.web writes, a refusal, the connection's close).
"""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from refresherd.http import wire
from refresherd.http.wire import HELD_SIZE, QuickRequest, WireSite
from tests.integration.test_reads import until
from tests.unit.test_wire import Quick, Recording, responses

pytestmark = pytest.mark.integration
reactor: Any = _reactor

GET = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n"


class WithLarge(Quick):
    """L{Quick}, and C{/large} answered with more than a held answer may be."""

    def answer(self, request: QuickRequest) -> bool:
        if request.path == b"/large":
            request.respond(b"x" * (HELD_SIZE + 1))
            return True
        return super().answer(request)


class HeldAnswersTests(TestCase):
    def setUp(self) -> None:
        self.resource = Recording()
        self.site = WireSite(self.resource, lambda method, path: 100, reactor=reactor)
        self.site.quick = WithLarge()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.sent: list[bytes] = []
        real = wire.send_at_once

        def counted(transport: Any, sock: Any, data: bytes) -> None:
            self.sent.append(data)
            real(transport, sock, data)

        self.patch(wire, "send_at_once", counted)

    async def ask(self, data: bytes, answers: int) -> tuple[list[Any], bool]:
        """C{data} sent at once: the first C{answers} answers, and whether the server closed."""
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        client.setblocking(False)
        self.addCleanup(client.close)
        await until(lambda: self.site.reads.watching() == 1)
        client.sendall(data)
        got = bytearray()
        closed = False

        def arrived() -> bool:
            nonlocal closed
            while select.select([client], [], [], 0)[0]:
                chunk = client.recv(65536)
                if not chunk:
                    closed = True
                    return True
                got.extend(chunk)
            found = responses(bytes(got))
            whole = all(len(body) == int(head.get(b"content-length", 0)) for _, head, body in found)
            return len(found) >= answers and whole

        await until(arrived)
        return responses(bytes(got)), closed

    async def test_answers_of_one_read_are_written_in_one_piece(self) -> None:
        found, closed = await self.ask(GET % b"/quick1" + GET % b"/quick2" + GET % b"/quick3", 3)
        self.assertEqual([body for _, _, body in found], [b"quick=/quick%d" % n for n in (1, 2, 3)])
        self.assertFalse(closed)
        self.assertEqual(len(self.sent), 1)

    async def test_an_answer_twisted_web_writes_does_not_overtake_one_held(self) -> None:
        data = GET % b"/quick1" + GET % b"/slow" + GET % b"/quick2"
        found, _ = await self.ask(data, 3)
        self.assertEqual(
            [body for _, _, body in found], [b"quick=/quick1", b"uri=/slow", b"quick=/quick2"]
        )

    async def test_a_refusal_and_the_close_come_after_the_answers_held(self) -> None:
        found, closed = await self.ask(GET % b"/quick1" + b"GET /a HTTP/1.1\nHost: h\n\n", 2)
        self.assertEqual(found[0][2], b"quick=/quick1")
        self.assertTrue(found[1][0].startswith(b"HTTP/1.1 400"))
        self.assertTrue(closed)

    async def test_connection_close_closes_after_the_answer_held(self) -> None:
        request = b"GET /quick1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        found, closed = await self.ask(request, 1)
        self.assertEqual([body for _, _, body in found], [b"quick=/quick1"])
        self.assertEqual(found[0][1][b"connection"], b"close")
        self.assertTrue(closed)

    async def test_a_large_answer_is_written_at_once_after_those_held_before_it(self) -> None:
        found, _ = await self.ask(GET % b"/quick1" + GET % b"/large" + GET % b"/quick2", 3)
        bodies = [body for _, _, body in found]
        self.assertEqual(bodies, [b"quick=/quick1", b"x" * (HELD_SIZE + 1), b"quick=/quick2"])
        self.assertEqual(len(self.sent), 3)  # the first released, the large one, the last held
        self.assertTrue(self.sent[1].endswith(b"x" * (HELD_SIZE + 1)))


class Medium(WithLarge):
    """L{WithLarge}, and C{/m} answered with half of what a held answer may be."""

    def answer(self, request: QuickRequest) -> bool:
        if request.path == b"/m":
            request.respond(b"m" * (HELD_SIZE // 2))
            return True
        return super().answer(request)


class FailedReleaseTests(TestCase):
    logged_errors: list[dict[str, Any]]

    @pytest.fixture(autouse=True)
    def _fixtures(self, no_logged_errors: list[dict[str, Any]]) -> None:
        self.logged_errors = no_logged_errors

    async def test_a_failed_write_of_what_is_held_aborts_the_connection(self) -> None:
        site = WireSite(Recording(), lambda method, path: 100, reactor=reactor)
        site.quick = Quick()
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def failing(transport: Any, sock: Any, data: bytes) -> None:
            raise ZeroDivisionError("a bug in a write")

        self.patch(wire, "send_at_once", failing)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.settimeout(5)
        self.addCleanup(client.close)
        await until(lambda: site.reads.watching() == 1)
        client.sendall(GET % b"/quick1" + GET % b"/quick2")
        await until(lambda: not site.channels)
        with self.assertRaises(ConnectionResetError):  # (aborted, no answer at all)
            client.recv(65536)
        self.assertEqual([e["log_failure"].type for e in self.logged_errors], [ZeroDivisionError])
        self.logged_errors.clear()
        self.flushLoggedErrors(ZeroDivisionError)


class HeldBoundTests(TestCase):
    async def test_a_client_that_does_not_read_gets_no_more_buffered_than_unheld(self) -> None:
        """
        Many pipelined requests in one read, their answers never read: what
        the connection holds is bounded, so its transport's full write buffer
        stops the answering (as when each was written at once), and the
        answers made are not all of them.
        """
        site = WireSite(Recording(), lambda method, path: 100, reactor=reactor)
        site.quick = Medium()
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        await until(lambda: len(site.channels) == 1)
        (channel,) = site.channels
        transport: Any = channel.transport
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        requests = GET % b"/m" * (60_000 // len(GET % b"/m"))
        client.sendall(requests)
        await until(lambda: transport.producerPaused)
        for _ in range(20):
            await deferLater(reactor, 0.005)
        buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        self.assertLessEqual(buffered, transport.bufferSize + 2 * HELD_SIZE)
        client.close()
        await until(lambda: not site.channels)
