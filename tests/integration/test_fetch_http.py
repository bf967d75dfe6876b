"""
The HTTP fetcher's production client against a real twisted.web server on
127.0.0.1: connections reused, redirects not followed, a cancelled or
oversized body closing its connection, a refused connection in one line.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from refresherd.entry import Fetched
from refresherd.errors import FetchError
from refresherd.fetchers.http import HTTPFetcher, Requester, make_http_client
from tests.stub_origin import Origin, answer, make_job, pending

global_reactor: Any = _reactor


class TrackingChannel(HTTPChannel):
    """A server connection that tells when it has closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.closed.callback(None)


class TrackingSite(Site):
    """A Site that knows when each of its connections has closed."""

    # A channel class where Site's annotation names its generic-channel factory, as
    # refresherd.http.site's LimitedSite does.
    protocol = TrackingChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.closed: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, TrackingChannel)
        self.closed.append(protocol.closed)
        return protocol


@implementer(IAgent)
@attrs.define
class ResponseWatcher:
    """An agent that tells when the headers of an answer arrived."""

    agent: IAgent
    arrived: list[Deferred[None]] = attrs.field(factory=list)

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        arrived: Deferred[None] = Deferred()
        self.arrived.append(arrived)

        def got(response: IResponse) -> IResponse:
            arrived.callback(None)
            return response

        return self.agent.request(method, uri, headers, bodyProducer).addCallback(got)


class RealNetworkTests(TestCase):
    """The production client against a real twisted.web server."""

    def serve(self, resource: Resource) -> str:
        self.site = site = TrackingSite(resource)
        port = global_reactor.listenTCP(0, site, interface="127.0.0.1")
        self.pool = HTTPConnectionPool(global_reactor, persistent=True)

        async def cleanup() -> None:
            # Let the client finish with its last answer (it may still be
            # parsing it: a test can end inside the callback that fired it).
            await deferLater(global_reactor, 0)
            await self.pool.closeCachedConnections()
            await port.stopListening()
            await gatherResults(site.closed)

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
        return f"http://127.0.0.1:{port.getHost().port}"

    def fetcher(self, url: str, client: Any = None, **job: Any) -> HTTPFetcher:
        client = client or make_http_client(global_reactor, pool=self.pool, connect_timeout=5)
        return HTTPFetcher(make_job(url=url, **job), client, global_reactor)

    async def test_fetches_over_a_persistent_connection(self) -> None:
        origin = Origin(answer(200, b'{"a": 1}', b"application/json"))
        base = self.serve(origin)
        fetcher = self.fetcher(base + "/items/{id}")
        first = await fetcher.fetch({"id": "1"})
        second = await fetcher.fetch({"id": "2"})
        assert first == second == Fetched(b'{"a": 1}', "application/json")
        assert [s.uri for s in origin.seen] == [b"/items/1", b"/items/2"]
        assert len(self.site.closed) == 1, "the connection was not reused"

    async def test_the_production_client_does_not_follow_redirects(self) -> None:
        def handler(request: Request) -> bytes:
            if request.path == b"/target":
                return b"followed"
            request.setResponseCode(302)
            request.setHeader(b"location", b"/target")
            return b"moved"

        origin = Origin(handler)
        base = self.serve(origin)
        with pytest.raises(FetchError) as raised:
            await self.fetcher(base + "/items/{id}").fetch({"id": "1"})
        assert str(raised.value) == "origin answered 302 (redirects are not followed)"
        assert [s.uri for s in origin.seen] == [b"/items/1"]

    async def test_cancelling_mid_body_closes_the_connection(self) -> None:
        origin = Origin(pending)
        base = self.serve(origin)
        watcher = ResponseWatcher(Agent(global_reactor, pool=self.pool))
        fetcher = self.fetcher(base + "/items/{id}", client=_client(watcher))
        d = fetcher.fetch({"id": "1"})
        while not origin.requests:
            await deferLater(global_reactor, 0.001)
        [request] = origin.requests
        request.write(b"the first part of a body that never ends")
        await watcher.arrived[0]
        await deferLater(global_reactor, 0)  # the body is being read now
        assert not d.called
        d.cancel()
        self.failureResultOf(d, CancelledError)
        [closed] = self.site.closed
        closed.addTimeout(5, global_reactor)
        await closed
        assert len(origin.lost) == 1

    async def test_a_close_delimited_body_over_the_cap_is_cut_off(self) -> None:
        sent: list[int] = []
        closed: Deferred[None] = Deferred()

        class Firehose(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                if b"\r\n\r\n" in data and not sent:
                    self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                    self.pump()

            def pump(self) -> None:
                if closed.called:
                    return
                assert self.transport is not None
                self.transport.write(b"x" * 65536)
                sent.append(65536)
                if len(sent) < 1000:
                    global_reactor.callLater(0, self.pump)

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                closed.callback(None)

        port = global_reactor.listenTCP(0, Factory.forProtocol(Firehose), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(global_reactor, persistent=False)
        fetcher = self.fetcher(
            f"http://127.0.0.1:{port.getHost().port}/{{id}}",
            client=make_http_client(global_reactor, pool=pool),
            max_value_bytes=200_000,
        )
        with pytest.raises(FetchError) as raised:
            await fetcher.fetch({"id": "1"})
        assert str(raised.value) == "body larger than 200000 bytes"
        closed.addTimeout(5, global_reactor)
        await closed
        await deferLater(global_reactor, 0)  # the last pump call
        assert len(sent) < 1000

    async def test_connection_refused_is_one_clear_line(self) -> None:
        port = global_reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        pool = HTTPConnectionPool(global_reactor, persistent=False)
        fetcher = self.fetcher(
            f"http://127.0.0.1:{number}/{{id}}", client=make_http_client(global_reactor, pool=pool)
        )
        with pytest.raises(FetchError) as raised:
            await fetcher.fetch({"id": "1"})
        message = str(raised.value)
        assert message.startswith("connection refused: "), message
        assert "\n" not in message


def _client(agent: IAgent) -> Requester:
    return HTTPClient(agent)
