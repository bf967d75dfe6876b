"""
L{refresherd.http.reads.ReadMux} on the real reactor with real TCP and UNIX
sockets: connections read through it (not the reactor), paused and resumed,
closed by the peer or by a failing protocol, many ready at once, one closed
by another in the same turn, and all lost when the reactor stops.
"""

from __future__ import annotations

import errno
import select
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from refresherd.http.reads import BATCH, HELD, ReadMux

pytestmark = pytest.mark.integration
reactor: Any = _reactor


class Served(Protocol):
    """Echoes what it reads; C{b"boom"} raises; C{b"pause"} pauses its transport."""

    def connectionMade(self) -> None:
        self.factory.mux.adopt(self.transport)
        self.factory.made.append(self)
        self.read: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.read.append(data)
        if data == b"boom":
            raise ZeroDivisionError("a bug")
        if data == b"pause":
            self.transport.pauseProducing()  # type: ignore[union-attr]
        if self.factory.closes_others:
            for other in self.factory.made:
                if other is not self:
                    other.transport.abortConnection()
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class FailsAsItEnds(Served):
    """Raises as it loses its connection: the first C{factory.failing} made do."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self in self.factory.made[: self.factory.failing]:
            raise RuntimeError("a bug in an end")


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Served):
    ends = 0

    def readConnectionLost(self) -> None:
        self.ends += 1

    def writeConnectionLost(self) -> None:
        pass


class Holding(Served):
    """Echoes what it reads once the turn it was read in is done (L{ReadMux.hold})."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.held: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.read.append(data)
        self.factory.events.append(("read", data))
        if self.held or self.factory.mux.hold(self):
            self.held.append(data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def release(self) -> None:
        self.factory.events.append(("released", b"".join(self.held)))
        if b"boom" in self.held:
            raise ZeroDivisionError("a bug in a release")
        held, self.held = self.held, []
        self.transport.write(b"".join(held))  # type: ignore[union-attr]


class Served_(Factory):
    protocol: type[Served] = Served

    def __init__(self, mux: ReadMux) -> None:
        self.mux = mux
        self.made: list[Served] = []
        self.closes_others = False
        self.failing = 1
        self.events: list[tuple[str, bytes]] = []


async def turns(n: int = 5) -> None:
    """Let the reactor turn C{n} times (accepts, reads and writes done)."""
    for _ in range(n):
        await deferLater(reactor, 0)


async def until(check: Any, limit: float = 5.0) -> None:
    """Turn the reactor until C{check()} holds (at most C{limit} seconds of turns)."""
    for _ in range(int(limit / 0.005)):
        if check():
            return
        await deferLater(reactor, 0.005)
    raise AssertionError("never held")


class ReadMuxTests(TestCase):
    logged_errors: list[dict[str, Any]]

    @pytest.fixture(autouse=True)
    def _fixtures(self, no_logged_errors: list[dict[str, Any]]) -> None:
        self.logged_errors = no_logged_errors

    def setUp(self) -> None:
        self.mux = ReadMux(reactor)
        self.factory = Served_(self.mux)
        self.port = reactor.listenTCP(0, self.factory, backlog=1024, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def connect(self) -> socket.socket:
        """A client connecting (the reactor accepts it once it turns)."""
        client = socket.socket()
        client.setblocking(False)
        self.addCleanup(client.close)
        client.connect_ex(("127.0.0.1", self.port.getHost().port))
        return client

    async def exchange(self, client: socket.socket, data: bytes) -> bytes:
        await until(lambda: select.select([], [client], [], 0)[1])  # (connected)
        client.sendall(data)
        got = bytearray()

        def arrived() -> bool:
            try:
                got.extend(client.recv(65536))
            except BlockingIOError:
                pass
            return len(got) >= len(data)

        await until(arrived)
        return bytes(got)

    async def test_a_connection_is_read_through_it_and_not_by_the_reactor(self) -> None:
        client = self.connect()
        self.assertEqual(await self.exchange(client, b"ping"), b"ping")
        (served,) = self.factory.made
        readers = reactor.getReaders()
        self.assertNotIn(served.transport, readers)
        self.assertIn(self.mux, readers)
        self.assertEqual(self.mux.watching(), 1)

    async def test_paused_it_is_not_read_and_resumed_it_is(self) -> None:
        client = self.connect()
        self.assertEqual(await self.exchange(client, b"pause"), b"pause")
        (served,) = self.factory.made
        self.assertEqual(self.mux.watching(), 0)
        self.assertNotIn(self.mux, reactor.getReaders())
        client.sendall(b"later")
        await turns(20)
        self.assertEqual(served.read, [b"pause"])
        served.transport.resumeProducing()  # type: ignore[union-attr]
        await until(lambda: served.read == [b"pause", b"later"])
        self.assertEqual(self.mux.watching(), 1)

    async def test_the_peer_closing_ends_the_connection_and_it_lets_go(self) -> None:
        client = self.connect()
        await self.exchange(client, b"ping")
        (served,) = self.factory.made
        client.close()
        await until(lambda: served.lost is not None)
        assert served.lost is not None
        served.lost.trap(error.ConnectionDone)
        self.assertEqual(self.mux.watching(), 0)
        self.assertNotIn(self.mux, reactor.getReaders())
        kept = self.mux.fileno()
        self.assertNotEqual(kept, -1)  # its epoll kept for the next connection
        self.assertEqual(await self.exchange(self.connect(), b"again"), b"again")
        self.assertEqual(self.mux.fileno(), kept)

    async def test_closed_when_it_watches_nothing_its_epoll_is_closed(self) -> None:
        client = self.connect()
        await self.exchange(client, b"ping")
        self.mux.close()  # (one still watched: kept)
        self.assertNotEqual(self.mux.fileno(), -1)
        client.close()
        await until(lambda: self.mux.watching() == 0)
        self.mux.close()
        self.assertEqual(self.mux.fileno(), -1)

    async def test_a_failing_protocol_loses_its_connection_only_and_is_logged(self) -> None:
        failing, other = self.connect(), self.connect()
        await until(lambda: self.mux.watching() == 2)
        failing.sendall(b"boom")
        await until(lambda: any(s.lost is not None for s in self.factory.made))
        (lost,) = [s for s in self.factory.made if s.lost is not None]
        lost.lost.trap(ZeroDivisionError)  # type: ignore[union-attr]
        self.assertEqual([e["log_failure"].type for e in self.logged_errors], [ZeroDivisionError])
        self.logged_errors.clear()
        self.flushLoggedErrors(ZeroDivisionError)  # (trial saw it too)
        self.assertEqual(await self.exchange(other, b"still"), b"still")
        self.assertEqual(self.mux.watching(), 1)

    async def test_more_connections_ready_than_one_turn_reads_are_all_answered(self) -> None:
        clients = [self.connect() for _ in range(BATCH + 44)]
        await until(lambda: self.mux.watching() == len(clients))
        reactor.removeReader(self.mux)  # (all of them ready before it reads any)
        for n, client in enumerate(clients):
            client.sendall(b"%d" % n)
        reactor.addReader(self.mux)
        answers = [bytearray() for _ in clients]

        def answered() -> bool:
            for client, answer in zip(clients, answers, strict=True):
                try:
                    answer.extend(client.recv(64))
                except BlockingIOError:
                    pass
            return all(answers)

        await until(answered)
        self.assertEqual(answers, [b"%d" % n for n in range(len(clients))])

    async def test_one_closed_by_another_in_the_same_turn_is_not_read(self) -> None:
        self.factory.closes_others = True
        first, second = self.connect(), self.connect()
        await until(lambda: self.mux.watching() == 2)
        reactor.removeReader(self.mux)
        first.sendall(b"one")
        second.sendall(b"two")
        await deferLater(reactor, 0.05)  # (loopback: both have arrived)
        self.mux.doRead()  # both ready: whichever is read first aborts the other
        self.assertEqual(sorted(len(s.read) for s in self.factory.made), [0, 1])
        self.assertEqual(self.mux.watching(), 1)
        reactor.addReader(self.mux)
        (aborted,) = [s for s in self.factory.made if not s.read]
        await until(lambda: aborted.lost is not None)
        aborted.lost.trap(error.ConnectionAborted)  # type: ignore[union-attr]

    async def test_a_hang_up_with_nothing_to_read_is_the_connections_end(self) -> None:
        client = self.connect()
        await self.exchange(client, b"ping")
        (served,) = self.factory.made
        real = self.mux._poll
        fd = served.transport.fileno()  # type: ignore[union-attr]

        class HungUp:
            def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
                return [(fd, select.EPOLLHUP)]

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        self.mux._poll = HungUp()
        self.mux.doRead()
        assert served.lost is not None
        served.lost.trap(error.ConnectionDone)
        self.assertEqual(self.mux.watching(), 0)
        self.assertEqual(served.read, [b"ping"])

    async def test_the_reactors_stop_loses_every_connection_it_reads(self) -> None:
        self.connect()
        self.connect()
        await until(lambda: self.mux.watching() == 2)
        self.mux.connectionLost(Failure(error.ConnectionLost()))
        for served in self.factory.made:
            assert served.lost is not None
            served.lost.trap(error.ConnectionLost)
        self.assertEqual(self.mux.watching(), 0)
        self.assertNotIn(self.mux, reactor.getReaders())

    async def test_a_unix_connection_is_read_through_it_too(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        path = str(Path(directory.name) / "s")
        port = reactor.listenUNIX(path, self.factory)
        self.addCleanup(port.stopListening)
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.setblocking(False)
        self.addCleanup(client.close)
        self.assertEqual(await self.exchange(client, b"unix"), b"unix")
        self.assertEqual(self.mux.watching(), 1)

    def test_other_transports_are_left_to_the_reactor(self) -> None:
        self.assertFalse(self.mux.adopt(StringTransport()))
        self.assertEqual(self.mux.watching(), 0)

    async def test_a_connection_of_another_reactor_is_left_to_it(self) -> None:
        client = self.connect()
        await self.exchange(client, b"ping")
        (served,) = self.factory.made
        kind = type(served.transport)
        self.assertFalse(ReadMux(MemoryReactor()).adopt(served.transport))
        self.assertIs(type(served.transport), kind)

    async def test_one_it_cannot_watch_is_read_by_the_reactor(self) -> None:
        def no_descriptors() -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        self.patch(select, "epoll", no_descriptors)
        client = self.connect()
        self.assertEqual(await self.exchange(client, b"ping"), b"ping")
        (served,) = self.factory.made
        self.assertIn(served.transport, reactor.getReaders())
        self.assertEqual(self.mux.watching(), 0)
        self.assertEqual([e["log_failure"].type for e in self.logged_errors], [OSError])
        self.logged_errors.clear()
        self.flushLoggedErrors(OSError)

    async def test_a_turn_reads_at_most_a_batch(self) -> None:
        clients = [self.connect() for _ in range(BATCH + 44)]
        await until(lambda: self.mux.watching() == len(clients))
        reactor.removeReader(self.mux)
        for client in clients:
            client.sendall(b"x")
        await deferLater(reactor, 0.05)  # (loopback: all have arrived)
        self.mux.doRead()
        self.assertEqual(sum(bool(s.read) for s in self.factory.made), BATCH)
        reactor.addReader(self.mux)
        await until(lambda: all(s.read for s in self.factory.made))

    async def test_an_end_that_raises_loses_that_connection_only(self) -> None:
        self.factory.protocol = FailsAsItEnds
        failing = self.connect()
        await until(lambda: self.mux.watching() == 1)
        others = [self.connect(), self.connect()]
        await until(lambda: self.mux.watching() == 3)
        failing.close()
        await until(lambda: self.mux.watching() == 2)
        self.assertEqual([e["log_failure"].type for e in self.logged_errors], [RuntimeError])
        self.logged_errors.clear()
        self.flushLoggedErrors(RuntimeError)
        for n, other in enumerate(others):
            self.assertEqual(await self.exchange(other, b"%d" % n), b"%d" % n)
        self.assertEqual(sum(s.lost is None for s in self.factory.made), 2)

    async def test_ends_that_raise_at_the_reactors_stop_end_the_others_too(self) -> None:
        self.factory.protocol = FailsAsItEnds
        self.factory.failing = 2
        for _ in range(3):
            self.connect()
        await until(lambda: self.mux.watching() == 3)
        self.mux.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(all(s.lost is not None for s in self.factory.made))
        self.assertEqual(len(self.logged_errors), 2)
        self.logged_errors.clear()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.mux.watching(), 0)
        self.assertEqual(await self.exchange(self.connect(), b"new"), b"new")

    async def test_a_half_closed_connection_is_not_read_again(self) -> None:
        self.factory.protocol = HalfCloseable
        client = self.connect()
        await self.exchange(client, b"ping")
        client.shutdown(socket.SHUT_WR)
        await turns(50)
        (served,) = self.factory.made
        assert isinstance(served, HalfCloseable)
        self.assertEqual((served.ends, self.mux.watching()), (1, 0))

    # -- writes held until the turn is done ------------------------------------------

    async def ready(self, count: int) -> list[socket.socket]:
        """C{count} connections, each having sent its number, none read yet."""
        self.factory.protocol = Holding
        clients = [self.connect() for _ in range(count)]
        await until(lambda: self.mux.watching() == count)
        reactor.removeReader(self.mux)
        for n, client in enumerate(clients):
            client.sendall(b"%d" % n)
        await deferLater(reactor, 0.05)  # (loopback: all have arrived)
        return clients

    def test_outside_a_turn_nothing_is_held(self) -> None:
        holder = Holding()
        self.assertFalse(self.mux.hold(holder))

    async def test_writes_held_in_a_turn_go_out_when_it_is_done_in_order(self) -> None:
        clients = await self.ready(3)
        self.mux.doRead()
        events = self.factory.events
        self.assertEqual([kind for kind, _ in events], ["read"] * 3 + ["released"] * 3)
        self.assertEqual(
            [data for kind, data in events if kind == "read"],
            [data for kind, data in events if kind == "released"],
        )
        reactor.addReader(self.mux)
        for n, client in enumerate(clients):
            await until(lambda client=client: select.select([client], [], [], 0)[0])
            self.assertEqual(client.recv(64), b"%d" % n)
        self.assertFalse(self.mux.hold(Holding()))  # (the turn is done)

    async def test_a_turn_holds_at_most_so_many_writers_at_once(self) -> None:
        await self.ready(HELD + 3)
        self.mux.doRead()
        kinds = [kind for kind, _ in self.factory.events]
        # The one after them is read, and asks to hold: they are released first.
        expected = ["read"] * (HELD + 1) + ["released"] * HELD + ["read"] * 2 + ["released"] * 3
        self.assertEqual(kinds, expected)
        reactor.addReader(self.mux)

    async def test_a_failing_release_is_logged_and_the_others_are_released(self) -> None:
        self.factory.protocol = Holding
        clients = [self.connect() for _ in range(3)]
        await until(lambda: self.mux.watching() == 3)
        reactor.removeReader(self.mux)
        for n, client in enumerate(clients):
            client.sendall(b"boom" if n == 1 else b"%d" % n)
        await deferLater(reactor, 0.05)
        self.mux.doRead()
        self.assertEqual([e["log_failure"].type for e in self.logged_errors], [ZeroDivisionError])
        self.logged_errors.clear()
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(len([k for k, _ in self.factory.events if k == "released"]), 3)
        reactor.addReader(self.mux)
        for n in (0, 2):
            await until(lambda n=n: select.select([clients[n]], [], [], 0)[0])
            self.assertEqual(clients[n].recv(64), b"%d" % n)
