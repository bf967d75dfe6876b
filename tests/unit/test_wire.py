"""
The public listener's llhttp channel (refresherd.http.wire) on what twisted.web's
channel does not meet the same way: request smuggling and malformed requests
refused with the error object, pipelined requests answered in order when the
first is answered later, HTTP/1.0, C{Connection: close}, C{Expect:
100-continue}, and the quick answerer.  The limits both channels share are in
test_site.py, which runs on both.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from refresherd.http.site import REQUEST_DEADLINE
from refresherd.http.wire import QuickRequest, WireChannel, WireSite


class Recording(Resource):
    """A leaf recording each request; it answers its URI, or (C{hang}) later."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, bytes]] = []
        self.pending: list[Request] = []
        self.hang = False

    def render(self, request: Any) -> bytes | int:
        self.seen.append((request.method, request.uri, request.content.read()))
        if self.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        uri: bytes = request.uri
        return b"uri=" + uri


@attrs.define
class Quick:
    """A quick answerer: C{/quick...} answered at once, C{/later...} when told."""

    later: list[QuickRequest] = attrs.field(factory=list)
    began: list[float] = attrs.field(factory=list)
    """When each request's answering began (L{QuickRequest.now}), in order."""

    def answer(self, request: QuickRequest) -> bool:
        self.began.append(request.now)
        if request.path.startswith(b"/quick"):
            request.setHeader(b"Content-Type", b"text/plain")
            request.respond(b"quick=" + request.uri)
            return True
        if request.path.startswith(b"/later"):
            self.later.append(request)
            return True
        return False


@attrs.define
class Wire:
    site: WireSite
    resource: Recording
    quick: Quick
    clock: Clock

    def connect(self) -> tuple[WireChannel, StringTransport]:
        proto: WireChannel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport


@pytest.fixture
def wire() -> Wire:
    clock = Clock()
    resource = Recording()
    site = WireSite(resource, lambda method, path: 100, reactor=clock)
    quick = Quick()
    site.quick = quick
    return Wire(site, resource, quick, clock)


def responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Every response in C{data} (each with a Content-Length): status line, headers, body."""
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        found.append((status, headers, data[:length]))
        data = data[length:]
    return found


GET = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n"


# Request smuggling and malformed requests


POST = b"POST /a HTTP/1.1\r\n"
SMUGGLING = {
    "content-length-and-chunked": b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "chunked-and-content-length": b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "two-content-lengths": POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "two-different-lengths": POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "signed-length": b"POST /a HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    "length-list": b"POST /a HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
    "obsolete-line-folding": b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  2\r\n\r\n",
    "bare-lf": b"GET /a HTTP/1.1\nHost: h\n\n",
    "bare-cr-in-a-value": b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r2\r\n\r\n",
    "space-in-a-name": b"GET /a HTTP/1.1\r\nHost: h\r\nX A: 1\r\n\r\n",
    "space-before-the-colon": b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length : 0\r\n\r\n",
    "no-colon": b"GET /a HTTP/1.1\r\nNo colon here\r\n\r\n",
    "nul-in-a-value": b"GET /a HTTP/1.1\r\nX-A: 1\x002\r\n\r\n",
    "gzip-transfer-coding": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "identity-transfer-coding": b"POST /a HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    "http-2-version": b"GET /a HTTP/2.0\r\nHost: h\r\n\r\n",
    "space-in-the-target": b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    "unknown-method": b"FROB /a HTTP/1.1\r\nHost: h\r\n\r\n",
    "bad-chunk-size": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_a_request_that_could_be_read_two_ways_is_refused_and_the_connection_closed(
    wire: Wire, request_bytes: bytes
) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(request_bytes + GET % b"/smuggled")
    [(status, headers, body)] = responses(transport.value())
    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert transport.disconnecting
    assert wire.resource.seen == []


def test_a_refusal_behind_a_request_under_way_is_answered_after_it(wire: Wire) -> None:
    wire.resource.hang = True
    proto, transport = wire.connect()
    proto.dataReceived(GET % b"/first" + b"GET /a HTTP/1.1\r\nX A: 1\r\n\r\n")
    assert transport.value() == b""
    assert not transport.disconnecting
    finish(wire.resource.pending[0])
    first, refused = responses(transport.value())
    assert first[2] == b"ok"
    assert refused[0] == b"HTTP/1.1 400 Bad Request"
    assert transport.disconnecting


# Pipelined requests, in order


def finish(request: Request) -> None:
    request.setHeader(b"content-length", b"2")
    request.write(b"ok")
    request.finish()


def test_pipelined_requests_are_answered_in_order_when_the_first_is_answered_later(
    wire: Wire,
) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(GET % b"/later/1" + GET % b"/quick/2" + GET % b"/tree/3")
    assert transport.value() == b""
    assert wire.resource.seen == []  # waiting behind the first
    assert transport.producerState == "paused"  # reading waits too
    wire.quick.later[0].respond(b"one")
    bodies = [body for _, _, body in responses(transport.value())]
    assert bodies == [b"one", b"quick=/quick/2", b"uri=/tree/3"]
    assert transport.producerState == "producing"
    assert not transport.disconnecting


def test_a_request_is_answered_as_of_when_its_answering_began(wire: Wire) -> None:
    # The time a hit is answered as of: when it was read, for one answered at once;
    # when its turn came, for one pipelined behind an answer that took time.
    proto, transport = wire.connect()
    wire.clock.advance(1)
    proto.dataReceived(GET % b"/quick/1")
    wire.clock.advance(0.5)
    proto.dataReceived(GET % b"/later/2" + GET % b"/quick/3")
    wire.clock.advance(2)
    wire.quick.later[0].respond(b"two")
    wire.clock.advance(1)
    proto.dataReceived(GET % b"/quick/1")  # the same bytes again: not parsed again
    assert wire.site.known
    assert wire.quick.began == [1, 1.5, 3.5, 4.5]
    assert len(responses(transport.value())) == 4


def test_answers_wait_while_the_client_does_not_read_them(wire: Wire) -> None:
    # A client pipelining requests and reading nothing: once the transport's buffer is full
    # (it pauses its producer), nothing more is answered, nor read, until it drains.
    proto, transport = wire.connect()
    assert transport.producer is proto and transport.streaming
    proto.dataReceived(GET % b"/quick/1")
    proto.pauseProducing()  # the transport's write buffer is full
    proto.dataReceived(GET % b"/quick/2" + GET % b"/tree/3")
    assert [body for _, _, body in responses(transport.value())] == [b"quick=/quick/1"]
    assert wire.resource.seen == []
    assert transport.producerState == "paused"
    proto.resumeProducing()  # drained
    bodies = [body for _, _, body in responses(transport.value())]
    assert bodies == [b"quick=/quick/1", b"quick=/quick/2", b"uri=/tree/3"]
    assert transport.producerState == "producing"
    assert not transport.disconnecting


def test_answers_left_unread_past_the_request_deadline_abort_the_connection(
    wire: Wire,
) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(GET % b"/quick/1")
    proto.pauseProducing()
    proto.dataReceived(GET % b"/quick/2")
    wire.clock.advance(REQUEST_DEADLINE - 1)
    assert not transport.disconnecting
    wire.clock.advance(1)
    assert transport.disconnected  # aborted: what it buffered is dropped


def test_a_closing_connection_that_drains_is_no_longer_held_by_its_producer(
    wire: Wire,
) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(b"GET /quick/1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert transport.disconnecting
    proto.pauseProducing()
    proto.resumeProducing()  # drained: the transport may close
    assert transport.producer is None


def test_a_quick_answer_given_after_the_connection_is_lost_writes_nothing(wire: Wire) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(GET % b"/later/1")
    proto.connectionLost(Failure(ConnectionDone()))
    wire.quick.later[0].respond(b"one")
    assert transport.value() == b""
    assert wire.site.channels == set()


def test_a_request_body_pipelined_behind_is_read_into_its_own_request(wire: Wire) -> None:
    proto, transport = wire.connect()
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    proto.dataReceived(GET % b"/later/1" + post + GET % b"/quick/3")
    wire.quick.later[0].respond(b"one")
    assert wire.resource.seen == [(b"POST", b"/p", b"abc")]
    bodies = [body for _, _, body in responses(transport.value())]
    assert bodies == [b"one", b"uri=/p", b"quick=/quick/3"]


# HTTP/1.0, Connection: close, HEAD, Expect


@pytest.mark.parametrize("path", [b"/tree", b"/quick"])
def test_an_http_1_0_request_is_answered_in_1_0_and_the_connection_closed(
    wire: Wire, path: bytes
) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(b"GET " + path + b" HTTP/1.0\r\n\r\n" + GET % b"/dropped")
    [(status, _, _)] = responses(transport.value())
    assert status == b"HTTP/1.0 200 OK"
    assert transport.disconnecting
    assert len(wire.resource.seen) <= 1


@pytest.mark.parametrize("path", [b"/tree", b"/quick"])
def test_connection_close_is_answered_with_it_and_closes(wire: Wire, path: bytes) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
    [(status, headers, _)] = responses(transport.value())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"connection"] == b"close"
    assert transport.disconnecting


def test_a_quick_head_answers_the_length_without_the_body(wire: Wire) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(b"HEAD /quick HTTP/1.1\r\nHost: h\r\n\r\n" + GET % b"/quick")
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 12" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert responses(rest)[0][2] == b"quick=/quick"


def test_expect_continue_is_told_to_continue_then_answered(wire: Wire) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.dataReceived(b"abc")
    assert wire.resource.seen == [(b"POST", b"/p", b"abc")]


def test_a_chunked_body_with_extensions_and_trailers_reaches_the_resource(wire: Wire) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(
        b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert wire.resource.seen == [(b"POST", b"/p", b"abcde")]
    assert not transport.disconnecting


def test_a_quick_answer_while_winding_down_says_connection_close(wire: Wire) -> None:
    proto, transport = wire.connect()
    proto.dataReceived(GET % b"/later")
    wire.site.wind_down()
    wire.quick.later[0].respond(b"one")
    [(_, headers, _)] = responses(transport.value())
    assert headers[b"connection"] == b"close"
    assert transport.disconnecting


# Requests read before: the same bytes again, answered without parsing


class Feeds:
    """The parser of a channel, counting what it is fed."""

    def __init__(self, proto: WireChannel) -> None:
        self.parser, self.fed = proto._parser, 0
        proto._parser = self  # type: ignore[assignment]

    def feed_data(self, data: bytes) -> None:
        self.fed += 1
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def test_the_same_request_again_is_answered_as_before_without_parsing(wire: Wire) -> None:
    request = GET % b"/quick?a=1"
    first, _ = wire.connect()
    first.dataReceived(request)
    proto, transport = wire.connect()
    feeds = Feeds(proto)
    for _ in range(3):
        proto.dataReceived(request)
    proto.dataReceived(request.replace(b"GET", b"HEAD"))
    answers = responses(transport.value())
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert [body for _, _, body in answers[:3]] == [b"quick=/quick?a=1"] * 3
    assert answers[3][1][b"content-length"] == b"16"  # HEAD: the length, no body
    assert feeds.fed == 1  # only the HEAD, read for the first time
    assert set(wire.site.known) == {request, request.replace(b"GET", b"HEAD")}
    assert not transport.disconnecting


def test_requests_served_by_the_resource_tree_are_known_too(wire: Wire) -> None:
    proto, transport = wire.connect()
    feeds = Feeds(proto)
    proto.dataReceived(GET % b"/tree")
    proto.dataReceived(GET % b"/tree")
    assert wire.resource.seen == [(b"GET", b"/tree", b"")] * 2
    assert [body for _, _, body in responses(transport.value())] == [b"uri=/tree"] * 2
    assert feeds.fed == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(GET % b"/quick" + GET % b"/quick", id="two-requests-in-one-read"),
        pytest.param(b"GET /quick HTTP/1.0\r\n\r\n", id="http-1.0"),
        pytest.param(b"GET /quick HTTP/1.1\r\nConnection: close\r\n\r\n", id="connection-close"),
        pytest.param(
            b"GET /quick HTTP/1.1\r\nProxy-Connection: close\r\n\r\n", id="proxy-connection-close"
        ),
        pytest.param(POST + b"Content-Length: 3\r\n\r\nabc", id="a-body"),
        pytest.param(b"PUT /quick HTTP/1.1\r\nContent-Length: 0\r\n\r\n", id="not-get-or-head"),
        pytest.param(
            b"GET /quick HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="chunked"
        ),
        pytest.param(b"GET /quick HTTP/1.1\r\nX-Pad: " + b"p" * 2048 + b"\r\n\r\n", id="large"),
        pytest.param(b"GET /quick HTTP/1.1\r\nX: \x01\r\n\r\n", id="refused"),
    ],
)
def test_only_a_whole_get_or_head_alone_in_its_read_that_keeps_the_connection_is_known(
    wire: Wire, data: bytes
) -> None:
    proto, _ = wire.connect()
    proto.dataReceived(data)
    assert wire.site.known == {}


def test_a_request_split_over_reads_or_after_one_under_way_is_parsed(wire: Wire) -> None:
    request = GET % b"/quick"
    proto, transport = wire.connect()
    proto.dataReceived(request[:5])
    proto.dataReceived(request[5:])
    assert wire.site.known == {}
    proto.dataReceived(request)  # now known
    proto.dataReceived(GET % b"/later")
    feeds = Feeds(proto)
    proto.dataReceived(request)  # behind one under way: parsed, and waits
    assert feeds.fed == 1
    wire.quick.later[0].respond(b"later")
    bodies = [body for _, _, body in responses(transport.value())]
    assert bodies == [b"quick=/quick", b"quick=/quick", b"later", b"quick=/quick"]


def test_known_requests_are_bounded_and_forgotten_together(wire: Wire) -> None:
    from refresherd.http.wire import KNOWN_KEPT

    proto, _ = wire.connect()
    for n in range(KNOWN_KEPT + 1):
        proto.dataReceived(GET % b"/quick?n=%d" % n)
    assert list(wire.site.known) == [GET % b"/quick?n=%d" % KNOWN_KEPT]


def test_a_known_request_after_a_lost_answer_or_while_winding_down(wire: Wire) -> None:
    request = GET % b"/quick"
    proto, _ = wire.connect()
    proto.dataReceived(request)
    wire.site.wind_down()
    proto, transport = wire.connect()
    proto.dataReceived(request)
    [(_, headers, body)] = responses(transport.value())
    assert (headers[b"connection"], body) == (b"close", b"quick=/quick")
    assert transport.disconnecting


# Review (h/review): what llhttp reads as the end of the connection, and what is kept


def test_proxy_connection_close_closes_as_llhttp_reads_it(wire: Wire) -> None:
    # llhttp reads Proxy-Connection as Connection: after this request it refuses any
    # other ("Data after `Connection: close`").  A first-time read then answered the
    # next request with a 400, a known one (never fed to the parser) with a 200.
    proto, transport = wire.connect()
    proto.dataReceived(b"GET /quick HTTP/1.1\r\nProxy-Connection: close\r\n\r\n")
    proto.dataReceived(GET % b"/quick")
    [(status, headers, _)] = responses(transport.value())
    assert (status, headers.get(b"connection")) == (b"HTTP/1.1 200 OK", b"close")
    assert transport.disconnecting


def test_known_requests_hold_little_more_than_their_bytes(wire: Wire) -> None:
    # Each kept request may be KNOWN_SIZE bytes, but what its parse holds (a tuple
    # and two bytes objects per header, up to MAX_HEADERS of them) is far more.
    import gc
    import tracemalloc

    from refresherd.http.site import MAX_HEADERS
    from refresherd.http.wire import KNOWN_KEPT, KNOWN_SIZE

    proto, transport = wire.connect()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(KNOWN_KEPT - 1):
            transport.clear()
            proto.dataReceived(
                b"GET /quick?%d HTTP/1.1\r\n%s\r\n" % (n, b"a:\r\n" * (MAX_HEADERS - 1))
            )
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * KNOWN_KEPT * KNOWN_SIZE, held
