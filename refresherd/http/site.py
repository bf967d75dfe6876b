"""
The HTTP server under the API: twisted.web's Site with the limits a public
service needs.  A request refused here gets its error object at once and the
connection closed, since what it still sends is not read.

- A request with a body has its head checked before a byte of the body is
  read (C{check_head}: on the public listener, a PUT needs a write token).
- Request bodies are capped while they arrive, not after spooling: a body
  announced or grown past its route's limit gets a 413 error object.
- A request line over C{MAX_LINE} bytes gets 414 C{uri_too_long}; a head over
  C{MAX_HEAD} bytes (request line and headers) or with more than
  C{MAX_HEADERS} headers gets 431 C{headers_too_large}.  (twisted.web's own
  limits: it closes the first without an answer and gives the others a bare
  400.)
- A request's head must arrive whole within C{head_timeout} seconds: of the
  connection's start for its first request, of its first byte for a later
  one on a kept-alive connection (whose wait in between is bounded by
  C{IDLE_TIMEOUT} and by the cap below).  The whole request must arrive
  within C{REQUEST_DEADLINE} seconds of its first byte; twisted.web's idle
  timeout alone resets on every byte, so a client trickling one byte a
  second would hold a connection for ever.
- Connections idle for C{IDLE_TIMEOUT} seconds are closed.
- At most C{max_connections} connections are open at once.  At the cap a new
  one is let in by closing the connection idle longest (no request under
  way: silent since it connected, or kept alive since its last answer), else
  the one whose request head has been arriving longest; only when every
  connection has a whole head in is the new one refused.  With
  C{max_connections_per_address}, a client address holding that many
  connections is refused more.

It also takes off twisted.web's own work per request what refresherd does
not need (a hit is mostly that work): the C{Date} header is formatted once a
second, not for every request; the query string of a C{GET} or C{HEAD} is
parsed into C{request.args} only if something reads them (refresherd reads
the query itself); the client's address is made once per connection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.resource import EncodingResourceWrapper, IResource

from refresherd.errors import (
    BodyTooLarge,
    HeadersTooLarge,
    RefresherdError,
    Unauthorized,
    UriTooLong,
)

_log = Logger()

IDLE_TIMEOUT = 60.0
REQUEST_DEADLINE = 30.0
HEAD_TIMEOUT = 10.0
MAX_CONNECTIONS = 1024
MAX_LINE = http.HTTPChannel.MAX_LENGTH
"""The longest request line (and header line) read: twisted.web's, 16384 bytes."""
MAX_HEAD = http.HTTPChannel.totalHeadersSize
"""The largest head read, request line and header lines together: twisted.web's, 16384 bytes."""
MAX_HEADERS = http.HTTPChannel.maxHeaders
"""The most headers read: twisted.web's, 500."""

_NO_FORM = (b"GET", b"HEAD")
"""Methods whose requests carry no form for twisted.web to parse into C{args}."""

BodyLimit = Callable[[bytes, bytes], int]
"""Given a request's method and path (with query), the largest body it may send."""

HeadCheck = Callable[[bytes, Headers], None]
"""
Given the method and headers of a request with a body, raise a
L{RefresherdError} to refuse it before the body is read.
"""

_REASONS = {
    401: b"Unauthorized",
    403: b"Forbidden",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def error_response(error: RefresherdError) -> bytes:
    """A whole answer with C{error}'s object, for a request refused before any resource saw it."""
    body = json.dumps(error.to_json()).encode("utf-8")
    reason = _REASONS.get(error.status) or http.RESPONSES.get(error.status, b"Error")
    head = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"Content-Type: application/json",
        b"Connection: close",
        b"Content-Length: %d" % len(body),
    ]
    if isinstance(error, Unauthorized):
        head.append(b"WWW-Authenticate: Bearer")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def tell_answered(request: Any) -> None:
    """Call the request's C{when_answered}, once; its failure is logged, never the request's."""
    done, request.when_answered = request.when_answered, None
    if done is not None:
        try:
            done()
        except Exception:
            _log.failure("timing or logging a request failed")


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
        tell_answered(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.answered()

    def gotLength(self, length: int | None) -> None:
        if length != 0:  # A body is coming (None: chunked, of unknown length).
            channel: Any = self.channel
            site: LimitedSite = channel.site
            method, path = getattr(channel, "_command", b""), getattr(channel, "_path", b"")
            try:
                if site.check_head is not None:
                    site.check_head(method, self.requestHeaders)
                self._limit = site.body_limit(method, path)
                if length is not None and length > self._limit:
                    raise BodyTooLarge(f"the request body is larger than {self._limit} bytes")
            except RefresherdError as error:
                self._refuse(error)
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self._refuse(BodyTooLarge(f"the request body is larger than {self._limit} bytes"))
            return
        super().handleContentChunk(data)

    def _refuse(self, error: RefresherdError) -> None:
        self._refused = True
        # No "100 Continue" after the refusal: twisted.web would send one next.
        self.requestHeaders.removeHeader(b"expect")
        channel: DeadlineChannel = self.channel  # type: ignore[assignment]
        channel.refuse(error)

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


class Connection(Protocol):
    """
    What a L{LimitedSite} keeps of each of its connections: a
    L{DeadlineChannel}, or the public listener's
    L{refresherd.http.wire.WireChannel}.
    """

    address: str | None
    persistent: int

    @property
    def transport(self) -> Any: ...

    @property
    def head_arriving(self) -> bool: ...


def _transport(channel: Connection) -> Any:
    """The TCP (or UNIX) transport of a connected channel: it can abort."""
    return channel.transport


class DeadlineChannel(http.HTTPChannel):
    """
    An HTTP channel that gives each request's head and whole a deadline, keeps
    its place among its site's idle connections and arriving heads, and
    answers the limits of the head with their error objects.

    Deadlines are noted, not timed: one timer per connection, left running
    while requests come and go, wakes at the earliest moment the current
    request could be late and either aborts the connection or sleeps until
    the next moment it could be.  (A timer set and cancelled per request cost
    several percent of a hit.)  It takes itself out of its site's idle
    connections, into its arriving heads, as a request begins.
    """

    address: str | None = None
    """The client's address, when its site bounds the connections of each."""
    _started: float | None = None
    """When the first byte of the request arriving now came; none between requests."""
    _head_from: float | None = None
    """
    Whence the head of the request arriving is timed: the connection's start
    for the first request, its first byte for a later one; none once a
    request has arrived whole, until the next one's first byte.
    """
    _head_timeout: float
    _timer: IDelayedCall | None = None
    _wake_at = math.inf
    """When L{_timer} fires (infinity: not set)."""
    _idle: dict[Connection, None]
    """L{LimitedSite.idle}."""
    _heads: dict[Connection, None]
    """L{LimitedSite.heads}."""
    _host: IAddress | None = None
    _peer: IAddress | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        site: LimitedSite = self.factory
        self._head_timeout = site.head_timeout
        self._idle, self._heads = site.idle, site.heads
        self._head_from = site.reactor.seconds()
        self._wake(self._head_from, self._head_timeout)
        site.opened(self)

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
            now = self._started = self.factory.reactor.seconds()
            if self._head_from is None:
                self._head_from = now
            due = self._head_from + self._head_timeout
            if due < self._wake_at:
                self._wake(now, due - now)
            self._idle.pop(self, None)
            self._heads[self] = None
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._started = self._head_from = None
        super().allContentReceived()

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        """Not kept alive once the site winds down (L{LimitedSite.wind_down})."""
        if self.factory.winding_down:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    @property
    def head_arriving(self) -> bool:
        """Whether a request's head is awaited or arriving (on a new connection: from its start)."""
        return bool(self.line_mode) and not self._handlingRequest and self._head_from is not None

    def _wake(self, now: float, delay: float) -> None:
        """Have the timer fire C{delay} seconds from C{now}."""
        if self._timer is None:
            self._timer = self.callLater(delay, self._check_deadlines)
        else:
            self._timer.reset(delay)
        self._wake_at = now + delay

    def _check_deadlines(self) -> None:
        self._timer, self._wake_at = None, math.inf
        due = math.inf
        if self._head_from is not None and self.head_arriving:
            due = self._head_from + self._head_timeout
        if self._started is not None:
            due = min(due, self._started + REQUEST_DEADLINE)
        if due == math.inf:
            return
        now = self.factory.reactor.seconds()
        if due > now:
            self._wake(now, due - now)
        else:
            _transport(self).abortConnection()

    def refuse(self, error: RefresherdError) -> None:
        """Answer C{error}'s object and close: the rest of the request is not read."""
        transport = _transport(self)
        transport.write(error_response(error))
        transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        # twisted.web closes the connection without a word.
        if hasattr(self, "_command"):  # The request line was read: a header's line.
            self.refuse(HeadersTooLarge(f"the request head is larger than {MAX_HEAD} bytes"))
        else:
            self.refuse(UriTooLong(f"the request line is longer than {MAX_LINE} bytes"))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's bare 400 for whatever it cannot read; a head over its
        # limits (each counted before this is called) gets its error object.
        if self._receivedHeaderSize > MAX_HEAD:
            self.refuse(HeadersTooLarge(f"the request head is larger than {MAX_HEAD} bytes"))
        elif self._receivedHeaderCount > MAX_HEADERS:
            self.refuse(HeadersTooLarge(f"the request has more than {MAX_HEADERS} headers"))
        else:
            super()._respondToBadRequestAndDisconnect()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._started = self._head_from = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer, self._wake_at = None, math.inf
        self.factory.channel_closed(self)
        super().connectionLost(reason)


class LimitedSite(server.Site):
    """A Site with head checks, body limits, request deadlines and connection bounds."""

    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: IResource,
        body_limit: BodyLimit,
        reactor: IReactorTime,
        *,
        check_head: HeadCheck | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_address: int = 0,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.plain_leaf = bool(getattr(resource, "isLeaf", False)) and not isinstance(
            resource, EncodingResourceWrapper
        )
        """Whether the root resource answers every request itself, with no encoder."""
        self._date: tuple[int, bytes] = (-1, b"")
        self.body_limit = body_limit
        self.check_head = check_head
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        """0: no bound."""
        self.head_timeout = head_timeout
        self.channels: set[Connection] = set()
        self.idle: dict[Connection, None] = {}
        """Connections with no request under way, the longest idle first (kept by each)."""
        self.heads: dict[Connection, None] = {}
        """
        Connections whose request has begun, the first to begin first (kept by
        each, and here: one whose head is in is dropped when L{_make_room} meets it).
        """
        self._per_address: dict[str, int] = {}
        """Open connections of each client address (with C{max_connections_per_address})."""
        self._closed: list[tuple[Deferred[None], Callable[[], bool]]] = []
        """What waits for connections to close, each until its condition holds."""
        self.winding_down = False
        """The process is stopping (L{wind_down})."""
        self.noisy = False

    def date(self, now: float | None = None) -> bytes:
        """The C{Date} header's value at C{now} (default: now), formatted once a second."""
        second = int(self.reactor.seconds() if now is None else now)
        if self._date[0] != second:
            self._date = (second, http.datetimeToString(second))
        return self._date[1]

    def buildProtocol(self, addr: IAddress) -> Any:  # type: ignore[override]
        address = getattr(addr, "host", None) if self.max_connections_per_address else None
        if address is not None and self._per_address.get(address, 0) >= (
            self.max_connections_per_address
        ):
            return None
        if len(self.channels) >= self.max_connections and not self._make_room():
            return None
        channel: Connection = super().buildProtocol(addr)
        channel.address = address
        return channel

    def _make_room(self) -> bool:
        """
        Close the connection idle longest, else the one whose head has been
        arriving longest; C{False} when every connection has a head in.
        """
        for waiting in (self.idle, self.heads):
            while waiting:
                channel = next(iter(waiting))
                if waiting is self.heads and not channel.head_arriving:
                    del waiting[channel]  # Its head is in; its next request comes back.
                elif self._forget(channel):
                    _transport(channel).loseConnection()
                    return True
        return False

    def opened(self, channel: Connection) -> None:
        """A connection is made: idle until its first byte."""
        self.channels.add(channel)
        self.idle[channel] = None
        if channel.address is not None:
            self._per_address[channel.address] = self._per_address.get(channel.address, 0) + 1

    def _forget(self, channel: Connection) -> bool:
        """Count C{channel} no more; C{False} if it was not counted."""
        self.idle.pop(channel, None)
        self.heads.pop(channel, None)
        if channel not in self.channels:
            return False
        self.channels.discard(channel)
        if channel.address is not None:
            left = self._per_address[channel.address] - 1
            if left:
                self._per_address[channel.address] = left
            else:
                del self._per_address[channel.address]
        return True

    def channel_closed(self, channel: Connection) -> None:
        self._forget(channel)
        waiting, self._closed = self._closed, []
        for d, done in waiting:
            if done():
                d.callback(None)
            else:
                self._closed.append((d, done))

    def wind_down(self) -> None:
        """
        The process is stopping: close the idle connections now, and every
        other one after the answer under way on it (C{Connection: close}), so
        that clients take their next requests elsewhere while the fetches in
        flight are let finish.
        """
        self.winding_down = True
        for channel in list(self.idle):
            _transport(channel).loseConnection()

    def until_answered(self, timeout: float) -> Deferred[None]:
        """
        Once L{wind_down}: fire when no connection has a request under way
        (each closes after its answer; one whose next head is still arriving
        is left to its deadlines), or after C{timeout} seconds.
        """
        return self._until(self._answered, timeout, abort=False)

    def _answered(self) -> bool:
        return all(channel.head_arriving for channel in self.channels)

    def close_connections(self, timeout: float) -> Deferred[None]:
        """
        Close every connection once what was written to it has been sent, so
        that answers given during shutdown reach their clients; fire when all
        are closed, or after C{timeout} seconds (then abort the rest).
        """
        for channel in list(self.channels):
            _transport(channel).loseConnection()
        return self._until(lambda: not self.channels, timeout, abort=True)

    def _until(self, done: Callable[[], bool], timeout: float, abort: bool) -> Deferred[None]:
        """
        Fire once C{done()} holds (asked as each connection closes); after
        C{timeout} seconds, abort the connections left (and fire once they are
        gone) or fire at once.
        """
        if done():
            return defer.succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append((closed, done))

        def expire() -> None:
            if abort:
                self._abort()
            elif not closed.called:
                self._closed.remove((closed, done))
                closed.callback(None)

        timer = self.reactor.callLater(timeout, expire)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        return closed.addCallback(stop_timer)

    def _abort(self) -> None:
        for channel in list(self.channels):
            _transport(channel).abortConnection()

    def log(self, request: http.Request) -> None:
        """
        Called by every request as it finishes: its L{LimitedRequest.answered},
        and its connection, if kept alive, is idle (until a request already
        sent on it begins, at once).  (No line of twisted.web's own here: it
        would cost a write per request; refresherd's access log is written by
        what L{LimitedRequest.when_answered} calls.)
        """
        if isinstance(request, LimitedRequest):
            request.answered()
        channel: Connection = request.channel  # type: ignore[assignment]
        if channel.persistent:  # Idle, unless a request that came meanwhile begins now.
            self.heads.pop(channel, None)
            if self.winding_down:
                channel.persistent = False  # closed once this request is done with it
            else:
                self.idle[channel] = None
