"""
The HTTP server under the API: twisted.web's Site with the limits a public
service needs.

- Request bodies are capped while they arrive, not after spooling: a body
  announced or grown past its route's limit gets a 413 error object at once
  and the connection is closed.
- A request must arrive whole (headers and body) within C{REQUEST_DEADLINE}
  seconds; twisted.web's idle timeout alone resets on every byte, so a client
  trickling one byte a second would hold a connection for ever.
- Connections idle for C{IDLE_TIMEOUT} seconds are closed.
- At most C{MAX_CONNECTIONS} connections are open at once; more are refused.

It also takes off twisted.web's own work per request what refresherd does
not need (a hit is mostly that work): the C{Date} header is formatted once a
second, not for every request; the query string of a C{GET} or C{HEAD} is
parsed into C{request.args} only if something reads them (refresherd reads
the query itself); the client's address is made once per connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import EncodingResourceWrapper, IResource

from refresherd.errors import BodyTooLarge

_log = Logger()

IDLE_TIMEOUT = 60.0
REQUEST_DEADLINE = 30.0
MAX_CONNECTIONS = 1024

_NO_FORM = (b"GET", b"HEAD")
"""Methods whose requests carry no form for twisted.web to parse into C{args}."""

BodyLimit = Callable[[bytes, bytes], int]
"""Given a request's method and path (with query), the largest body it may send."""


def _too_large_response(limit: int) -> bytes:
    body = json.dumps(BodyTooLarge(f"the request body is larger than {limit} bytes").to_json())
    return (
        b"HTTP/1.1 413 Content Too Large\r\n"
        b"Content-Type: application/json\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body.encode("ascii")
    )


class LimitedRequest(server.Request):
    """
    A request whose body is refused as soon as it passes its limit.

    @ivar when_answered: called once, when the request is answered (finished)
        or its connection is lost first; what times and logs it
        (L{refresherd.http.common.observe}) without a Deferred of C{notifyFinish}.
    """

    when_answered: Callable[[], None] | None = None
    _limit: int | None = None
    _received = 0
    _refused = False
    _args: dict[bytes, list[bytes]] | None = None

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """twisted.web's C{args}: for a C{GET} or C{HEAD}, the query parsed when first read."""
        if self._args is None:
            query = self.uri.partition(b"?")[2]
            self._args = http.parse_qs(query, 1) if query else {}
        return self._args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]]) -> None:
        self._args = value

    def answered(self) -> None:
        """Call L{when_answered}, once; its failure is logged, never the request's."""
        done, self.when_answered = self.when_answered, None
        if done is not None:
            try:
                done()
            except Exception:
                _log.failure("timing or logging a request failed")

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.answered()

    def gotLength(self, length: int | None) -> None:
        if length != 0:  # A body is coming (None: chunked, of unknown length).
            channel: Any = self.channel
            limit = channel.site.body_limit(
                getattr(channel, "_command", b""), getattr(channel, "_path", b"")
            )
            self._limit = limit
            if length is not None and length > limit:
                self._refuse()
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        # No "100 Continue" after the refusal: twisted.web would send one next.
        self.requestHeaders.removeHeader(b"expect")
        transport: Any = self.channel.transport
        transport.write(_too_large_response(self._limit or 0))
        transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        if command not in _NO_FORM:
            super().requestReceived(command, path, version)
            return
        # twisted.web's, less what it does for a form body, and C{args} left to L{args}.
        content: Any = self.content
        content.seek(0, 0)
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.partition(b"?")[0]
        self.process()

    def process(self) -> None:
        channel: Any = self.channel
        site: LimitedSite = channel.site
        if not site.plain_leaf or self.path == b"*":
            super().process()
            return
        # twisted.web's for a root resource that is a leaf (no child to look
        # up) with no encoder, with the Date the site formats once a second.
        self.site = site
        self.setHeader(b"Server", server.version)
        self.setHeader(b"Date", site.date())
        self.prepath = []
        self.sitepath: list[bytes] = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(Failure())


def _transport(channel: http.HTTPChannel) -> Any:
    """The TCP (or UNIX) transport of a connected channel: it can abort."""
    return channel.transport


class DeadlineChannel(http.HTTPChannel):
    """
    An HTTP channel that gives each request a deadline to arrive whole.

    A request's start is noted, not timed: one timer per connection, left
    running while requests come and go, wakes at the earliest moment the
    current request could be late and either aborts the connection or sleeps
    until the current request's own deadline.  (A timer set and cancelled per
    request cost several percent of a hit.)
    """

    _started: float | None = None
    """When the first byte of the request arriving now came; none between requests."""
    _deadline: IDelayedCall | None = None
    _host: IAddress | None = None
    _peer: IAddress | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channels.add(self)

    def getHost(self) -> IAddress:
        # Asked by every request; the transport asks the kernel each time.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        # Asked by every request; the transport makes a new address each time.
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        if self._started is None and not self._handlingRequest:
            self._started = self.factory.reactor.seconds()
            if self._deadline is None:
                self._deadline = self.callLater(REQUEST_DEADLINE, self._checkDeadline)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._started = None
        super().allContentReceived()

    def _checkDeadline(self) -> None:
        self._deadline = None
        if self._started is None:
            return
        late = self._started + REQUEST_DEADLINE - self.factory.reactor.seconds()
        if late > 0:
            self._deadline = self.callLater(late, self._checkDeadline)
        else:
            _transport(self).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._started = None
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        self.factory.channel_closed(self)
        super().connectionLost(reason)


class LimitedSite(server.Site):
    """A Site with body limits, request deadlines and a connection cap."""

    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: IResource,
        body_limit: BodyLimit,
        reactor: IReactorTime,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.plain_leaf = bool(getattr(resource, "isLeaf", False)) and not isinstance(
            resource, EncodingResourceWrapper
        )
        """Whether the root resource answers every request itself, with no encoder."""
        self._date: tuple[int, bytes] = (-1, b"")
        self.body_limit = body_limit
        self.max_connections = max_connections
        self.channels: set[DeadlineChannel] = set()
        self._closed: Deferred[None] | None = None
        self.noisy = False

    def date(self) -> bytes:
        """The C{Date} header's value now, formatted once a second."""
        second = int(self.reactor.seconds())
        if self._date[0] != second:
            self._date = (second, http.datetimeToString(second))
        return self._date[1]

    def buildProtocol(self, addr: IAddress) -> DeadlineChannel | None:  # type: ignore[override]
        if len(self.channels) >= self.max_connections:
            return None
        channel: DeadlineChannel | None = super().buildProtocol(addr)
        return channel

    def channel_closed(self, channel: DeadlineChannel) -> None:
        self.channels.discard(channel)
        if not self.channels and self._closed is not None:
            closed, self._closed = self._closed, None
            closed.callback(None)

    def close_connections(self, timeout: float) -> Deferred[None]:
        """
        Close every connection once what was written to it has been sent, so
        that answers given during shutdown reach their clients; fire when all
        are closed, or after C{timeout} seconds (then abort the rest).
        """
        if not self.channels:
            return defer.succeed(None)
        self._closed = Deferred()
        for channel in list(self.channels):
            _transport(channel).loseConnection()
        timer = self.reactor.callLater(timeout, self._abort)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        return self._closed.addCallback(stop_timer)

    def _abort(self) -> None:
        for channel in list(self.channels):
            _transport(channel).abortConnection()

    def log(self, request: http.Request) -> None:
        """
        Called by every request as it finishes: its L{LimitedRequest.answered}.
        (No line of twisted.web's own here: it would cost a write per request;
        refresherd's access log is written by what L{LimitedRequest.when_answered} calls.)
        """
        if isinstance(request, LimitedRequest):
            request.answered()
