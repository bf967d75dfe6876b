"""
The public listener's HTTP/1.1 connections, parsed in C by llhttp (through
C{httptools}) on Twisted's reactor, with the limits of L{refresherd.http.site}.

L{WireChannel} reads requests and keeps them in order; L{WireSite} is the
L{LimitedSite} that builds it (the same connection bounds, deadlines, head
checks and body limits).  A request is answered in one of two ways:

- C{GET}/C{HEAD} of a value (C{/v1/jobs/{job}} and C{/v1/jobs/{job}/raw}),
  nearly all traffic, by the site's C{quick} answerer
  (L{refresherd.http.fastpath.QuickValues}) on a L{QuickRequest}: no
  twisted.web C{Request}, no resource lookup, the answer written in one
  piece; the very bytes of such a request read whole before
  (L{WireSite.known}) are not parsed again;
- anything else by the site's twisted.web resource tree, on a
  L{refresherd.http.site.LimitedRequest} made as twisted.web's own channel
  makes it, the channel standing in for twisted.web's.

What the parser refuses (a malformed request line or header, obsolete line
folding, a bare CR or LF, both C{Content-Length} and C{Transfer-Encoding}, a
duplicate or invalid C{Content-Length}, a transfer coding other than
C{chunked}, an HTTP version other than 1.0 and 1.1) gets 400 C{bad_request}
and the connection closed.  Answers go out in the order the requests came;
while one is under way, the requests after it are read (their limits
enforced as they arrive) and wait, and reading pauses once one waits.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import httptools
from twisted.internet import tcp
from twisted.internet.interfaces import IAddress, IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers

from refresherd.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    RefresherdError,
    UriTooLong,
)
from refresherd.http.reads import ReadMux
from refresherd.http.site import (
    IDLE_TIMEOUT,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    REQUEST_DEADLINE,
    LimitedRequest,
    LimitedSite,
    error_response,
    tell_answered,
)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class _Stop(Exception):
    """Raised in a parser callback to stop parsing: the request was refused."""


class QuickAnswerer(Protocol):
    """What answers C{GET}/C{HEAD} of values without twisted.web (L{QuickValues})."""

    def answer(self, request: QuickRequest) -> bool:
        """
        Answer C{request} (now or later, by L{QuickRequest.respond}), or
        return C{False} to leave it to the resource tree.
        """


@attrs.define(eq=False)
class Incoming:
    """A request as read: its head, and its body once it has come."""

    method: bytes
    uri: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    """Each header's name (lower case) and value, as they came."""
    length: int | None
    """C{Content-Length}; None for a chunked body."""
    limit: int
    request: LimitedRequest | None = None
    """The twisted.web request its body is read into (a request with a body)."""
    received: int = 0
    persistent: bool = True
    memo: Any = None
    """What the quick answerer keeps of it (L{refresherd.http.fastpath.Known})."""

    def header(self, name: bytes) -> bytes | None:
        """The last value of header C{name} (lower case), if any: as twisted.web reads it."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def joined(self, name: bytes) -> bytes | None:
        """Every value of header C{name} (lower case) as one list, if any: C{a, b}."""
        values = [value for key, value in self.headers if key == name]
        return b", ".join(values) if values else None


@attrs.define(eq=False)
class _Refusal:
    """An error to answer once the requests before it are, then close."""

    error: RefresherdError


HELD_SIZE = 16 * 1024
"""
The most a L{HeldSender} holds: a larger answer is written at once, so that
the system sends it while the next is made (copying it, not waking the
client, is what it costs), and past it what is held is written first, so
that a client's full write buffer stops its answers as it would were none held.
"""


class HeldSender:
    """
    What writes (L{send}) to the plain socket under its transport at once
    (L{send_at_once}), or, during a turn of its L{ReadMux} (L{reads}), once
    the turn is done (L{ReadMux.hold}): what it holds goes out in order, in
    one piece.
    """

    transport: Any
    _socket: Any = None
    """The plain TCP (or UNIX) socket under the transport (None: none, it is not written to)."""
    _held: list[bytes] | None = None
    """What L{send} holds until the turn is done, in order."""
    _held_size = 0
    """Bytes in L{_held}: at most L{HELD_SIZE}, so that a full write buffer stops answers."""

    def reads(self) -> ReadMux:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        """
        Write C{data}, at once if it may be; during a turn, once it is done,
        unless it is larger than L{HELD_SIZE} (what is held before it is
        written first).  What is held is written first too once it and
        C{data} are more than L{HELD_SIZE}: a client sending many requests in
        one read gets its answers as the transport takes them, never more
        than it would were none held.
        """
        if self._held is not None and self._held_size + len(data) > HELD_SIZE:
            self.release()
        if len(data) > HELD_SIZE:
            send_at_once(self.transport, self._socket, data)
        elif self._held is not None:
            self._held.append(data)
            self._held_size += len(data)
        elif self._socket is not None and self.reads().hold(self):
            self._held = [data]
            self._held_size = len(data)
        else:
            send_at_once(self.transport, self._socket, data)

    def release(self) -> None:
        """
        Write what L{send} held, now.  Should that fail (a bug), the
        connection is aborted: its later answers would pair with the wrong requests.
        """
        held, self._held = self._held, None
        self._held_size = 0
        if held:
            try:
                send_at_once(self.transport, self._socket, b"".join(held))
            except BaseException:
                self.transport.abortConnection()
                raise


class WireChannel(HeldSender, TwistedProtocol):
    """
    One HTTP/1.1 connection of a L{WireSite}: requests parsed by llhttp,
    answered in order, with the head and request deadlines, idle timeout and
    place among the site's connections that L{refresherd.http.site} gives a
    twisted.web channel.

    It also stands in for twisted.web's channel for the L{LimitedRequest}s it
    makes (C{site}, C{getPeer}, C{writeHeaders}, C{requestDone}, ...).
    """

    factory: WireSite
    site: WireSite
    """Its factory (set by twisted.web's C{Site.buildProtocol}), as a request reads it."""
    address: str | None = None
    """The client's address, when its site bounds the connections of each."""
    persistent: int = True
    """Whether the request under way leaves the connection open (read by L{LimitedSite.log})."""

    _host: IAddress | None = None
    _peer: IAddress | None = None
    _timer: IDelayedCall | None = None
    _wake_at = math.inf
    _started: float | None = None
    """When the first byte of the request arriving now came; none between requests."""
    _head_from: float | None = None
    """Whence the head arriving is timed; none once it is in."""
    _last: float = 0.0
    """When the connection last did something (a byte in, an answer out): for the idle timeout."""
    _busy = False
    """A request is being answered."""
    _running = False
    _closing = False
    """Nothing more is read: a request was refused, or the last one read closes the connection."""
    _current: LimitedRequest | QuickRequest | None = None
    _incoming: Incoming | None = None
    _url: bytes = b""
    _head_size = 0
    _header_count = 0
    _unparsed = 0
    """Bytes read since the parser last reported something (a head's line may wait in it)."""
    _in_head = False
    _paused = False
    """Whether reading from the client is paused."""
    _registered = False
    """Whether it is the transport's producer (not while a request's producer is)."""
    _blocked_since: float | None = None
    """Since when the transport's write buffer is full (the client does not read its
    answers): no request is answered, nor read, until it drains, and the connection is
    aborted if it has not within L{REQUEST_DEADLINE}."""
    _completed = 0
    """Requests the parser completed in the bytes it is being fed."""
    _last_incoming: Incoming | None = None

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Incoming | _Refusal] = deque()
        self._headers: list[tuple[bytes, bytes]] = []

    # -- the connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        site = self.factory
        transport: Any = self.transport
        site.reads.adopt(transport)
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        if isinstance(transport, tcp.Connection) and not transport.TLS:
            self._socket = transport.socket
        self._last = self._head_from = site.reactor.seconds()
        self._wake(self._last, site.head_timeout)
        # The transport tells when its write buffer is full, and when it drained again.
        transport.registerProducer(self, True)
        self._registered = True
        site.opened(self)

    # -- the transport's producer: answers wait while the client does not read them ----

    def pauseProducing(self) -> None:
        now = self.factory.reactor.seconds()
        self._blocked_since = now
        if now + REQUEST_DEADLINE < self._wake_at:
            self._wake(now, REQUEST_DEADLINE)
        self._reading()

    def resumeProducing(self) -> None:
        self._blocked_since = None
        transport = self._transport()
        if transport.disconnecting:
            # Drained, and closing: without a producer, the transport closes now.
            if self._registered:
                self._registered = False
                transport.unregisterProducer()
            return
        self._run()
        self._reading()

    def stopProducing(self) -> None:
        self._closing = True

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = self.transport.getPeer()
        return self._peer

    def isSecure(self) -> bool:
        return False

    def reads(self) -> ReadMux:
        return self.factory.reads

    def _transport(self) -> Any:
        """The transport, what it holds written first: nothing may overtake it."""
        if self._held is not None:
            self.release()
        return self.transport

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        site = self.factory
        now = self._last = site.reactor.seconds()
        alone = self._started is None
        if alone and not self._busy and not self._queue and self._blocked_since is None:
            incoming = site.known.get(data)
            if incoming is not None:
                # The very bytes of a request read whole before, alone between
                # requests: what the parser made of them then, without parsing.
                self._head_from = None
                self._busy = True
                self.persistent = True
                self._answer(incoming, now)
                return
        if alone:
            self._started = now
            if self._head_from is None:
                self._head_from = now
            due = self._head_from + site.head_timeout
            if due < self._wake_at:
                self._wake(now, due - now)
            site.idle.pop(self, None)
            site.heads[self] = None
        self._unparsed += len(data)
        self._completed = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # After a request asking to switch protocols (or a CONNECT),
            # answered as HTTP: nothing more is read.
            self._closing = True
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Stop):
                raise
        except httptools.HttpParserError as e:
            reason = " ".join(str(e).split()) or "malformed"
            self._refuse(BadRequest(f"the request is not valid HTTP/1.1: {reason}"))
        if self._in_head and not self._closing and self._unparsed > MAX_HEAD:
            # Bytes of a head none of whose lines ended: never buffered for ever.
            self._refuse(HeadersTooLarge(f"the request head is larger than {MAX_HEAD} bytes"))
        elif alone and self._completed == 1 and self._started is None and not self._closing:
            assert self._last_incoming is not None
            site.remember(data, self._last_incoming)
        self._last_incoming = None  # (not kept alive here: a body's request, its args)
        self._reading()

    def _reading(self) -> None:
        """Read from the client unless its answers wait (one under way, or unread)."""
        pause = self._blocked_since is not None or bool(self._queue and self._busy)
        if pause != self._paused and not self._closing:
            self._paused = pause
            if pause:
                self._transport().pauseProducing()
            else:
                self._transport().resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._held = None
        self._started = self._head_from = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer, self._wake_at = None, math.inf
        current, self._current = self._current, None
        self._queue.clear()
        self.factory.channel_closed(self)
        if current is not None:
            current.connectionLost(reason)
        incoming, self._incoming = self._incoming, None
        if (
            incoming is not None
            and incoming.request is not None
            and incoming.request is not current
        ):
            incoming.request.connectionLost(reason)

    @property
    def head_arriving(self) -> bool:
        """Whether a request's head is awaited or arriving (on a new connection: from its start)."""
        return self._head_from is not None and not self._busy and not self._closing

    # -- deadlines ---------------------------------------------------------------

    def _wake(self, now: float, delay: float) -> None:
        if self._timer is None:
            self._timer = self.factory.reactor.callLater(delay, self._check_deadlines)
        else:
            self._timer.reset(delay)
        self._wake_at = now + delay

    def _check_deadlines(self) -> None:
        self._timer, self._wake_at = None, math.inf
        now = self.factory.reactor.seconds()
        unread = math.inf  # when answers the client leaves unread have waited too long
        if self._blocked_since is not None:
            unread = self._blocked_since + REQUEST_DEADLINE
        if unread <= now:
            self._transport().abortConnection()
            return
        if self._closing and not self._busy:
            if unread < math.inf:
                self._wake(now, unread - now)
            return
        due = math.inf
        if not self._busy:
            if self._head_from is not None:
                due = self._head_from + self.factory.head_timeout
            if self._started is not None:
                due = min(due, self._started + REQUEST_DEADLINE)
        abort = min(due, unread)
        idle = self._last + IDLE_TIMEOUT if not self._busy and self._started is None else math.inf
        if abort <= now:
            self._transport().abortConnection()
        elif idle <= now:
            self._closing = True
            self._transport().loseConnection()
        elif min(abort, idle) < math.inf:
            self._wake(now, min(abort, idle) - now)

    # -- parsing (llhttp's callbacks) ----------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = self._header_count = 0
        self._incoming = None
        self._in_head = True
        if self._started is None:  # A request after another in the same read.
            self._started = self._head_from = self._last

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._unparsed = 0
        if self._line_size() > MAX_LINE:
            self._stop(UriTooLong(f"the request line is longer than {MAX_LINE} bytes"))

    def _line_size(self) -> int:
        method = self._parser.get_method() or b""
        return len(method) + len(self._url) + len(b"  HTTP/1.1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._unparsed = 0
        if not self._headers:
            self._head_size = self._line_size()
        self._head_size += len(name) + len(value) + 2
        self._header_count += 1
        if self._head_size > MAX_HEAD:
            self._stop(HeadersTooLarge(f"the request head is larger than {MAX_HEAD} bytes"))
        if self._header_count > MAX_HEADERS:
            self._stop(HeadersTooLarge(f"the request has more than {MAX_HEADERS} headers"))
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._unparsed = 0
        self._in_head = False
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._stop(BadRequest("the request is not HTTP/1.1 or HTTP/1.0"))
        method = parser.get_method()
        length: int | None = 0
        assert version is not None  # (else stopped)
        incoming = Incoming(method, self._url, version, self._headers, 0, 0)
        coding = incoming.joined(b"transfer-encoding")
        declared = incoming.header(b"content-length")
        if coding is not None:
            if coding.strip().lower() != b"chunked":
                self._stop(BadRequest("the only transfer coding read is chunked"))
            length = None
        elif declared is not None:
            length = int(declared)  # llhttp checked it: digits only, one header.
        incoming.length = length
        self._incoming = incoming
        self._head_from = None
        if length == 0:
            return
        site = self.factory
        try:
            if site.check_head is not None:
                site.check_head(method, _headers(self._headers))
            incoming.limit = site.body_limit(method, self._url)
            if length is not None and length > incoming.limit:
                raise BodyTooLarge(f"the request body is larger than {incoming.limit} bytes")
        except RefresherdError as error:
            self._stop(error)
        request = incoming.request = self._make_request(incoming)
        http.Request.gotLength(request, length)
        expect = incoming.header(b"expect")
        if (
            expect is not None
            and expect.lower() == b"100-continue"
            and version == b"HTTP/1.1"
            and not self._busy
            and not self._queue
        ):
            self._transport().write(_CONTINUE)

    def on_body(self, data: bytes) -> None:
        incoming = self._incoming
        assert incoming is not None and incoming.request is not None
        self._unparsed = 0
        incoming.received += len(data)
        if incoming.received > incoming.limit:
            self._stop(BodyTooLarge(f"the request body is larger than {incoming.limit} bytes"))
        http.Request.handleContentChunk(incoming.request, data)

    def on_message_complete(self) -> None:
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        self._started = self._head_from = None
        self._unparsed = 0
        # Every Connection header (twisted.web reads the first only), and whatever else
        # llhttp reads as one (Proxy-Connection): after it, llhttp refuses any request.
        parser = self._parser
        tokens = (incoming.joined(b"connection") or b"").lower().replace(b",", b" ").split()
        if (
            incoming.version != b"HTTP/1.1"
            or b"close" in tokens
            or not parser.should_keep_alive()
            or parser.should_upgrade()
        ):
            incoming.persistent = False
            self._closing = True
        self._completed += 1
        self._last_incoming = incoming
        self._queue.append(incoming)
        if not self._busy:
            self._run()
        if self._closing:
            raise _Stop()

    def _stop(self, error: RefresherdError) -> None:
        self._refuse(error)
        raise _Stop()

    def _refuse(self, error: RefresherdError) -> None:
        """Answer C{error}'s object once the requests before are answered, then close."""
        self._closing = True
        self._started = self._head_from = None
        self._in_head = False
        self._incoming = None
        self._queue.append(_Refusal(error))
        if not self._busy:
            self._run()

    # -- answering, in order -----------------------------------------------------

    def _run(self) -> None:
        """Answer the requests waiting, in order, until one is under way."""
        if self._running:
            return
        self._running = True
        try:
            while self._queue and not self._busy and self._blocked_since is None:
                item = self._queue.popleft()
                if isinstance(item, _Refusal):
                    transport = self._transport()
                    transport.write(error_response(item.error))
                    transport.loseConnection()
                    self._queue.clear()
                    return
                self._busy = True
                self.persistent = item.persistent
                self._answer(item)
        finally:
            self._running = False
        self._reading()

    def _answer(self, incoming: Incoming, now: float | None = None) -> None:
        """
        Answer C{incoming}, its answering begun at C{now} (the reactor's clock,
        read if not given: only a quick answer is made as of it).
        """
        site = self.factory
        site.idle.pop(self, None)
        if site.quick is not None and incoming.request is None and incoming.method in _QUICK:
            if now is None:
                now = site.reactor.seconds()
            quick = QuickRequest(self, incoming, now)
            self._current = quick
            if site.quick.answer(quick):
                return
        request = incoming.request or self._make_request(incoming)
        self._current = request
        request.requestReceived(incoming.method, incoming.uri, incoming.version)

    def _make_request(self, incoming: Incoming) -> LimitedRequest:
        request: LimitedRequest = self.factory.requestFactory(self)
        for name, value in incoming.headers:
            request.requestHeaders.addRawHeader(name, value)
        if incoming.length == 0:
            http.Request.gotLength(request, 0)
        return request

    def answered(self, request: object) -> None:
        """C{request} is answered: the next one waiting may be, or the connection closes."""
        if request is not self._current:
            return
        self._current = None
        self._busy = False
        self._last = self.factory.reactor.seconds()
        if not self.persistent:
            self._closing = True
            self._queue.clear()
            self._transport().loseConnection()
            return
        site = self.factory
        if self._started is not None:  # A request began while this one was answered.
            self._started = self._last
            if self._in_head:
                self._head_from = self._last
            if self._last + site.head_timeout < self._wake_at:
                self._wake(self._last, site.head_timeout)
        elif not self._queue:
            site.heads.pop(self, None)
            site.idle[self] = None
            if self._last + IDLE_TIMEOUT < self._wake_at:
                self._wake(self._last, IDLE_TIMEOUT)
        self._run()

    # -- twisted.web's channel, for the LimitedRequests made here --------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        if self.factory.winding_down and self.persistent:
            self.persistent = False
            headers.setRawHeaders(b"connection", [b"close"])
        elif not self.persistent and version == b"HTTP/1.1":
            headers.setRawHeaders(b"connection", [b"close"])
        lines = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        lines.append(b"\r\n")
        self._transport().writeSequence(lines)

    def write(self, data: bytes) -> None:
        self._transport().write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._transport().writeSequence(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # A request's producer takes the channel's place until it is done.
        transport = self._transport()
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        transport = self._transport()
        transport.unregisterProducer()
        if not transport.disconnecting and not self._closing:
            transport.registerProducer(self, True)
            self._registered = True

    def loseConnection(self) -> None:
        self._closing = True
        self._transport().loseConnection()

    def requestDone(self, request: http.Request) -> None:
        self.answered(request)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # A form body twisted.web cannot parse.
        self._closing = True
        transport = self._transport()
        transport.write(error_response(BadRequest("the request body is not a valid form")))
        transport.loseConnection()


_QUICK = (b"GET", b"HEAD")
KNOWN_KEPT, KNOWN_SIZE, KNOWN_HEADERS = 1024, 2048, 32
"""
How many requests L{WireSite.known} keeps, of how many bytes and headers at
most (a request's parse holds far more than its bytes).
"""


def _headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


_REASONS = http.RESPONSES


class QuickRequest:
    """
    As much of twisted.web's request as a value's answer uses
    (L{refresherd.http.fastpath.Values}, L{refresherd.http.answers},
    L{refresherd.http.common.observe}), its answer written in one piece.
    """

    code = 200
    when_answered: Any = None
    head: bytes | None = None
    """The answer's head up to its C{Content-Length} as written before, to write as is."""
    keep: Callable[[bytes, bytes], None] | None = None
    """Given the head up to its C{Content-Length} once made, and its C{Date}: to write it again."""
    _finished = False
    _lost = False

    def __init__(self, channel: WireChannel, incoming: Incoming, now: float) -> None:
        self.channel = channel
        self.incoming = incoming
        self.now = now
        """When its answering began (the reactor's clock): what a hit's answer is as of."""
        self.method = incoming.method
        self.uri = incoming.uri
        self.path = incoming.uri.partition(b"?")[0]
        self.clientproto = incoming.version
        self.response: dict[bytes, tuple[bytes, bytes]] = {}
        """The answer's headers by lower-case name: the name as set, and the value."""

    def getHeader(self, name: bytes) -> bytes | None:
        return self.incoming.header(name.lower())

    def getClientAddress(self) -> IAddress:
        return self.channel.getPeer()

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.response[name.lower()] = (name, value)

    def removeHeader(self, name: bytes) -> None:
        self.response.pop(name.lower(), None)

    def respond(self, body: bytes, now: float | None = None) -> None:
        """
        Write the answer with C{body}, dated C{now} (default: the clock's
        time; the time it was made as of), and the request is done.
        """
        if self._finished or self._lost:
            return
        self._finished = True
        channel = self.channel
        site = channel.site
        persistent = channel.persistent
        if site.winding_down and persistent:
            persistent = channel.persistent = False
        code = self.code
        head = self.head
        if head is None:
            date = site.date(now)
            lines = [
                b"%s %d %s\r\n" % (self.clientproto, code, _REASONS.get(code, b"Unknown")),
                b"Server: %s\r\nDate: %s\r\n" % (server.version, date),
            ]
            for name, value in self.response.values():
                lines += (name, b": ", value, b"\r\n")
            head = b"".join(lines)
            if self.keep is not None:
                self.keep(head, date)
        close = b""
        if not persistent and self.clientproto == b"HTTP/1.1":
            close = b"Connection: close\r\n"
        length = len(body)
        if self.method == b"HEAD" or code == 304:
            body = b""
        channel.send(b"%sContent-Length: %d\r\n%s\r\n%s" % (head, length, close, body))
        tell_answered(self)
        channel.answered(self)

    @property
    def responseHeaders(self) -> QuickRequest:
        """Itself: what removes a header (twisted.web's C{responseHeaders.removeHeader})."""
        return self

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        tell_answered(self)


class WireSite(LimitedSite):
    """
    A L{LimitedSite} whose connections are L{WireChannel}s; C{quick}, if
    set, answers C{GET} and C{HEAD} before the resource tree is asked.
    """

    protocol = WireChannel  # type: ignore[assignment]
    quick: QuickAnswerer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = ReadMux(self.reactor)  # type: ignore[arg-type]
        """What reads its plain TCP and UNIX connections (see L{refresherd.http.reads})."""
        self.known: dict[bytes, Incoming] = {}
        """
        Requests read whole in one read, by their bytes (at most L{KNOWN_KEPT},
        each at most L{KNOWN_SIZE} bytes; all forgotten when more come): what
        the parser made of them, for the same bytes arriving again alone.
        Only C{GET} and C{HEAD} with no body that leave the connection open.
        """

    def stopFactory(self) -> None:
        super().stopFactory()
        self.reads.close()

    def remember(self, data: bytes, incoming: Incoming) -> None:
        """Keep what C{data}, a whole request and nothing more, was read as, if it may be."""
        if (
            incoming.method in _QUICK
            and incoming.length == 0
            and incoming.persistent
            and incoming.request is None
            and len(data) <= KNOWN_SIZE
            and len(incoming.headers) <= KNOWN_HEADERS
        ):
            if len(self.known) >= KNOWN_KEPT:
                self.known.clear()
            self.known[data] = incoming


def send_at_once(transport: Any, sock: Any, data: bytes) -> None:
    """
    Write C{data} to C{sock}, the plain socket under C{transport} (None if
    there is none), at once when nothing waits before it in the transport
    and the socket takes it whole (a hit's answer nearly always): one
    system call, where the transport's write costs two changes of what the
    reactor watches the socket for and a turn of the reactor.  Else (or on a
    failure, which the transport then meets) the transport writes it.
    """
    if (
        sock is not None
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
