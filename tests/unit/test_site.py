"""
The HTTP server's limits (refresherd.http.site), driven without sockets: the
channel built by L{LimitedSite} on a L{task.Clock}, connected to a
L{StringTransport}, fed request bytes, and judged by the bytes it writes back
and whether it closes or aborts the connection.

Every test runs on both channels: twisted.web's (L{DeadlineChannel}, the
admin listener's) and llhttp's (L{WireChannel} of L{WireSite}, the public
listener's).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import NOT_DONE_YET, GzipEncoderFactory, Request, Site

from refresherd.errors import Forbidden, Unauthorized
from refresherd.http.site import (
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    REQUEST_DEADLINE,
    DeadlineChannel,
    HeadCheck,
    LimitedSite,
)
from refresherd.http.wire import WireSite

LIMIT = 10
PUT_LIMIT = 100

SITES: list[type[LimitedSite]] = [LimitedSite, WireSite]
_site_class: list[type[LimitedSite]] = [LimitedSite]


@pytest.fixture(autouse=True, params=SITES, ids=["twisted-web", "llhttp"])
def site_class(request: pytest.FixtureRequest) -> type[LimitedSite]:
    """The site every test of this module builds: each test runs on both."""
    _site_class[0] = request.param
    return _site_class[0]


class AbortableTransport(StringTransport):
    """A StringTransport that says whether it was aborted, not only closed."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RecordingResource(Resource):
    """A leaf that records every request reaching it; it answers C{ok}, or never."""

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
        return b"ok"


@attrs.define
class Server:
    clock: Clock
    resource: RecordingResource
    site: LimitedSite
    limit_calls: list[tuple[bytes, bytes]]
    port: int = 40000

    def build(self, host: str = "127.0.0.1") -> DeadlineChannel | None:
        self.port += 1
        channel: DeadlineChannel | None = self.site.buildProtocol(
            IPv4Address("TCP", host, self.port)
        )
        return channel

    def connect(self, host: str = "127.0.0.1") -> tuple[DeadlineChannel, AbortableTransport]:
        proto = self.build(host)
        assert proto is not None
        transport = AbortableTransport()
        proto.makeConnection(transport)
        return proto, transport


def make_server(
    max_connections: int = 16,
    body_limit: Callable[[bytes, bytes], int] | None = None,
    check_head: HeadCheck | None = None,
    **limits: Any,
) -> Server:
    clock = Clock()
    resource = RecordingResource()
    calls: list[tuple[bytes, bytes]] = []

    def limit(method: bytes, path: bytes) -> int:
        calls.append((method, path))
        if body_limit is not None:
            return body_limit(method, path)
        return LIMIT

    site = _site_class[0](
        resource,
        limit,
        reactor=clock,
        check_head=check_head,
        max_connections=max_connections,
        **limits,
    )
    return Server(clock, resource, site, calls)


@pytest.fixture
def server() -> Server:
    return make_server()


def lose(proto: DeadlineChannel) -> None:
    """What the reactor does once a closed or aborted transport is gone."""
    proto.connectionLost(Failure(ConnectionDone()))


@attrs.frozen
class Response:
    status_line: bytes
    headers: dict[bytes, bytes]
    body: bytes
    rest: bytes
    """Whatever was written after this response."""


def parse_response(data: bytes) -> Response:
    """One HTTP/1.1 response with a Content-Length, and the bytes after it."""
    head, sep, after = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data!r}"
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers[b"content-length"])
    return Response(status_line, headers, after[:length], after[length:])


def assert_refused(transport: AbortableTransport, status: bytes, code: str) -> Response:
    """The one answer written: C{status} with C{code}'s error object; the connection closes."""
    response = parse_response(transport.value())
    assert response.status_line.startswith(b"HTTP/1.1 " + status + b" ")
    assert response.headers[b"content-type"] == b"application/json"
    assert response.headers[b"connection"] == b"close"
    error = json.loads(response.body)["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert response.rest == b""
    assert transport.disconnecting
    return response


def assert_too_large(transport: AbortableTransport) -> None:
    assert_refused(transport, b"413", "body_too_large")


def post_head(length: int, path: bytes = b"/v1/fetch", method: bytes = b"POST") -> bytes:
    return (
        method + b" " + path + b" HTTP/1.1\r\nHost: refresherd.test\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


CHUNKED_HEAD = (
    b"POST /v1/fetch HTTP/1.1\r\nHost: refresherd.test\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n"


# Body limits


def test_announced_body_over_the_limit_gets_413_and_close_without_reaching_the_resource(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(post_head(LIMIT + 1))
    assert_too_large(transport)
    assert server.resource.seen == []


def test_announced_body_over_the_limit_is_refused_even_when_the_whole_body_arrives(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(post_head(LIMIT + 1) + b"x" * (LIMIT + 1))
    assert_too_large(transport)
    assert parse_response(transport.value()).rest == b""
    assert server.resource.seen == []


def test_a_huge_announced_length_is_refused_before_any_body_byte(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(post_head(10**15))
    assert_too_large(transport)
    assert server.resource.seen == []


def test_expect_continue_over_the_limit_gets_only_the_413(server: Server) -> None:
    proto, transport = server.connect()
    head = post_head(LIMIT + 1)
    proto.dataReceived(head[:-2] + b"Expect: 100-continue\r\n\r\n")
    assert_too_large(transport)
    assert parse_response(transport.value()).rest == b""


def test_chunked_body_growing_over_the_limit_gets_413_and_close(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(CHUNKED_HEAD + chunk(b"a" * 6))
    assert transport.value() == b""
    assert not transport.disconnecting
    proto.dataReceived(chunk(b"b" * 5))
    assert_too_large(transport)
    proto.dataReceived(chunk(b"c") + b"0\r\n\r\n")
    assert server.resource.seen == []
    assert parse_response(transport.value()).rest == b""


def test_chunked_body_over_the_limit_in_one_read_never_reaches_the_resource(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(CHUNKED_HEAD + chunk(b"z" * (LIMIT + 1)) + b"0\r\n\r\n")
    assert_too_large(transport)
    assert server.resource.seen == []


def test_content_length_exactly_at_the_limit_reaches_the_resource(server: Server) -> None:
    proto, transport = server.connect()
    body = b"0123456789"
    assert len(body) == LIMIT
    proto.dataReceived(post_head(LIMIT) + body)
    assert server.resource.seen == [(b"POST", b"/v1/fetch", body)]
    response = parse_response(transport.value())
    assert response.status_line.startswith(b"HTTP/1.1 200 ")
    assert response.body == b"ok"
    assert not transport.disconnecting


def test_chunked_body_exactly_at_the_limit_reaches_the_resource(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(CHUNKED_HEAD + chunk(b"abcd") + chunk(b"efghij") + b"0\r\n\r\n")
    assert server.resource.seen == [(b"POST", b"/v1/fetch", b"abcdefghij")]
    assert parse_response(transport.value()).status_line.startswith(b"HTTP/1.1 200 ")
    assert not transport.disconnecting


def test_body_limit_is_asked_with_the_method_and_the_path_with_its_query() -> None:
    server = make_server()
    proto, _ = server.connect()
    proto.dataReceived(post_head(3, path=b"/v1/jobs/j?id=7", method=b"PUT") + b"abc")
    assert server.limit_calls == [(b"PUT", b"/v1/jobs/j?id=7")]


def test_a_request_without_a_body_does_not_ask_for_its_limit(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /v1/jobs/j?id=7 HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    proto.dataReceived(post_head(0, path=b"/v1/jobs/j?id=8", method=b"PUT"))
    assert [uri for _, uri, _ in server.resource.seen] == [b"/v1/jobs/j?id=7", b"/v1/jobs/j?id=8"]
    assert server.limit_calls == []
    assert not transport.disconnecting


def test_a_route_may_get_a_larger_limit_than_another() -> None:
    def limit(method: bytes, path: bytes) -> int:
        return PUT_LIMIT if method == b"PUT" and path.startswith(b"/v1/jobs/") else LIMIT

    server = make_server(body_limit=limit)
    body = b"p" * 50
    put, put_transport = server.connect()
    put.dataReceived(post_head(len(body), path=b"/v1/jobs/j?id=1", method=b"PUT") + body)
    assert server.resource.seen == [(b"PUT", b"/v1/jobs/j?id=1", body)]
    assert not put_transport.disconnecting

    post, post_transport = server.connect()
    post.dataReceived(post_head(len(body)) + body)
    assert_too_large(post_transport)
    assert len(server.resource.seen) == 1


def test_the_limit_applies_to_each_request_on_a_kept_alive_connection(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(post_head(4) + b"abcd")
    assert not transport.disconnecting
    transport.clear()
    proto.dataReceived(post_head(LIMIT + 5))
    assert_too_large(transport)
    assert server.resource.seen == [(b"POST", b"/v1/fetch", b"abcd")]


# Checks of a request's head before its body is read


def refuse_puts(method: bytes, headers: Headers) -> None:
    """A head check as the public listener's: a PUT needs C{Authorization: Bearer w}."""
    if method == b"PUT":
        token = headers.getRawHeaders(b"authorization")
        if token is None:
            raise Unauthorized("a valid bearer token is required")
        if token != [b"Bearer w"]:
            raise Forbidden("a read token may not do this")


def put_head(length: int, *headers: bytes) -> bytes:
    return (
        post_head(length, path=b"/v1/jobs/j?id=1", method=b"PUT")[:-2]
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )


def test_a_put_without_a_token_gets_401_before_its_body_and_its_limit() -> None:
    server = make_server(check_head=refuse_puts)
    proto, transport = server.connect()
    proto.dataReceived(put_head(32 * 1024 * 1024))
    response = assert_refused(transport, b"401", "unauthorized")
    assert response.headers[b"www-authenticate"] == b"Bearer"
    assert server.limit_calls == []
    assert server.resource.seen == []
    proto.dataReceived(b"x" * 100_000)  # What still comes is neither kept nor answered.
    assert parse_response(transport.value()).rest == b""
    assert server.resource.seen == []


def test_a_put_with_a_token_that_may_not_write_gets_403_before_its_body() -> None:
    server = make_server(check_head=refuse_puts)
    proto, transport = server.connect()
    proto.dataReceived(put_head(5, b"Authorization: Bearer r"))
    assert_refused(transport, b"403", "forbidden")
    assert server.resource.seen == []


def test_a_chunked_put_without_a_token_is_refused_at_its_head() -> None:
    server = make_server(check_head=refuse_puts)
    proto, transport = server.connect()
    proto.dataReceived(
        b"PUT /v1/jobs/j?id=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert_refused(transport, b"401", "unauthorized")


def test_a_put_refused_at_its_head_is_not_told_to_continue() -> None:
    server = make_server(check_head=refuse_puts)
    proto, transport = server.connect()
    proto.dataReceived(put_head(5, b"Expect: 100-continue"))
    assert not transport.value().startswith(b"HTTP/1.1 100")
    assert_refused(transport, b"401", "unauthorized")


def test_a_put_whose_head_passes_is_limited_and_reaches_the_resource() -> None:
    server = make_server(check_head=refuse_puts)
    proto, transport = server.connect()
    proto.dataReceived(put_head(3, b"Authorization: Bearer w") + b"abc")
    assert server.resource.seen == [(b"PUT", b"/v1/jobs/j?id=1", b"abc")]
    assert not transport.disconnecting
    transport.clear()
    proto.dataReceived(put_head(LIMIT + 1, b"Authorization: Bearer w"))
    assert_too_large(transport)


def test_the_head_check_is_not_asked_about_a_request_without_a_body() -> None:
    asked: list[bytes] = []
    server = make_server(check_head=lambda method, headers: asked.append(method))
    proto, _ = server.connect()
    proto.dataReceived(b"GET /v1/jobs/j?id=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    proto.dataReceived(post_head(0, path=b"/v1/jobs/j?id=1", method=b"PUT"))
    proto.dataReceived(post_head(2) + b"ab")
    assert asked == [b"POST"]
    assert len(server.resource.seen) == 3


# The limits of a request's head


def test_a_request_line_over_the_limit_gets_414_without_reaching_the_resource(
    server: Server,
) -> None:
    proto, transport = server.connect()
    target = b"/v1/jobs/j?id=" + b"1" * MAX_LINE
    proto.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert_refused(transport, b"414", "uri_too_long")
    assert server.resource.seen == []


def test_a_request_line_is_refused_as_soon_as_it_passes_the_limit(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /v1/jobs/j?id=" + b"1" * (MAX_LINE - 100))
    assert transport.value() == b""
    proto.dataReceived(b"1" * 200)  # No end of line yet.
    assert_refused(transport, b"414", "uri_too_long")


def test_a_request_line_of_exactly_the_limit_is_read(server: Server) -> None:
    proto, transport = server.connect()
    start, end = b"GET /x?id=", b" HTTP/1.1"
    line = start + b"1" * (MAX_LINE - len(start) - len(end)) + end
    assert len(line) == MAX_LINE
    proto.dataReceived(line + b"\r\n\r\n")
    assert parse_response(transport.value()).body == b"ok"


def test_a_request_line_over_the_limit_on_a_kept_alive_connection_gets_414(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    transport.clear()
    proto.dataReceived(b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n")
    assert_refused(transport, b"414", "uri_too_long")
    assert [uri for _, uri, _ in server.resource.seen] == [b"/a"]


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Long: " + b"a" * MAX_LINE],  # one line over the limit
        [b"X-%d: " % i + b"a" * 1000 for i in range(MAX_HEAD // 1000 + 1)],  # all of them
        [b"X-%d: a" % i for i in range(MAX_HEADERS + 1)],  # too many
    ],
    ids=["a-long-line", "a-large-head", "too-many"],
)
def test_headers_over_the_limits_get_431_without_reaching_the_resource(
    server: Server, headers: list[bytes]
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
    assert_refused(transport, b"431", "headers_too_large")
    assert server.resource.seen == []


def test_the_most_headers_read_reach_the_resource(server: Server) -> None:
    proto, transport = server.connect()
    headers = b"".join(b"X-%d: a\r\n" % i for i in range(MAX_HEADERS))
    proto.dataReceived(b"GET /a HTTP/1.1\r\n" + headers + b"\r\n")
    assert parse_response(transport.value()).body == b"ok"


def test_a_request_twisted_web_cannot_read_still_gets_its_bare_400(
    server: Server, site_class: type[LimitedSite]
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nNo colon here\r\n\r\n")
    if site_class is WireSite:  # llhttp's channel answers with the error object
        assert_refused(transport, b"400", "bad_request")
    else:
        assert transport.value() == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    assert transport.disconnecting


# The head timeout and the request deadline


def test_a_silent_connection_is_aborted_at_the_head_timeout(server: Server) -> None:
    proto, transport = server.connect()
    server.clock.advance(HEAD_TIMEOUT - 0.01)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.aborted


def test_the_first_head_counts_from_the_connections_start(server: Server) -> None:
    proto, transport = server.connect()
    server.clock.advance(HEAD_TIMEOUT - 1)
    proto.dataReceived(b"GET /a HTTP/1.1\r\n")
    server.clock.advance(1)
    assert transport.aborted
    assert server.resource.seen == []


def test_a_head_in_time_leaves_its_body_the_request_deadline(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(post_head(LIMIT))
    server.clock.advance(REQUEST_DEADLINE - 0.01)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.aborted


def test_headers_trickling_in_are_aborted_at_the_head_timeout(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /v1/jobs/j?id=1 HTTP/1.1\r\nHost: refresherd.test\r\nX-Slow: ")
    for _ in range(int(HEAD_TIMEOUT) - 1):
        server.clock.advance(1)
        proto.dataReceived(b"a")
        assert not transport.disconnecting
    server.clock.advance(1)
    assert transport.aborted
    assert server.resource.seen == []


def test_the_head_timeout_is_the_sites() -> None:
    server = make_server(head_timeout=2.5)
    proto, transport = server.connect()
    server.clock.advance(2.49)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.aborted


def test_a_body_trickling_in_is_aborted_at_the_deadline_even_though_bytes_keep_coming(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(post_head(LIMIT))
    for _ in range(LIMIT - 1):
        server.clock.advance(REQUEST_DEADLINE / LIMIT)
        proto.dataReceived(b"x")
        assert not transport.disconnecting
    server.clock.advance(REQUEST_DEADLINE / LIMIT)
    assert transport.aborted
    assert server.resource.seen == []


def test_a_complete_request_clears_its_deadlines(server: Server) -> None:
    server.resource.hang = True
    proto, transport = server.connect()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    assert len(server.resource.pending) == 1
    server.clock.advance(REQUEST_DEADLINE * 10)
    assert not transport.disconnecting
    assert not transport.aborted


def test_a_later_head_on_a_kept_alive_connection_counts_from_its_first_byte(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /one HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    server.clock.advance(IDLE_TIMEOUT - 5)  # Idle: no head is awaited.
    assert not transport.disconnecting
    proto.dataReceived(b"GET /two HTTP/1.1\r\n")
    server.clock.advance(HEAD_TIMEOUT - 0.01)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.aborted
    assert [uri for _, uri, _ in server.resource.seen] == [b"/one"]


def test_each_request_on_a_kept_alive_connection_gets_a_fresh_deadline(
    server: Server,
) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET /one HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    server.clock.advance(REQUEST_DEADLINE - 5)
    proto.dataReceived(post_head(LIMIT))
    server.clock.advance(REQUEST_DEADLINE - 1)
    assert not transport.disconnecting
    server.clock.advance(1)
    assert transport.aborted
    assert [uri for _, uri, _ in server.resource.seen] == [b"/one"]


def test_a_head_after_a_slow_body_is_still_timed_from_its_first_byte(server: Server) -> None:
    """The timer left for the first request's whole deadline is brought forward."""
    proto, transport = server.connect()
    proto.dataReceived(post_head(2) + b"a")
    server.clock.advance(15)
    proto.dataReceived(b"b")  # Answered at 15 s; its deadline's timer is set for 30 s.
    assert len(server.resource.seen) == 1
    server.clock.advance(1)
    proto.dataReceived(b"GET /two HTTP/1.1\r\n")
    server.clock.advance(HEAD_TIMEOUT - 0.01)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.aborted


def test_a_lost_connection_leaves_no_deadline_or_timeout_behind(server: Server) -> None:
    proto, _ = server.connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    assert server.clock.getDelayedCalls() != []
    lose(proto)
    assert server.clock.getDelayedCalls() == []


# The idle timeout (twisted.web's own, on the injected reactor)


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    server.clock.advance(IDLE_TIMEOUT - 0.01)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.disconnecting
    assert not transport.aborted


def test_the_idle_timeout_restarts_after_a_finished_request(server: Server) -> None:
    proto, transport = server.connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    server.clock.advance(IDLE_TIMEOUT / 2)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    assert len(server.resource.seen) == 2
    server.clock.advance(IDLE_TIMEOUT - 0.01)
    assert not transport.disconnecting
    server.clock.advance(0.01)
    assert transport.disconnecting


# The connection cap


def answered(proto: DeadlineChannel) -> None:
    proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")


def test_at_the_cap_the_connection_idle_longest_is_closed_for_a_new_one() -> None:
    server = make_server(max_connections=3)
    silent, silent_transport = server.connect()  # idle since 0 s
    server.clock.advance(1)
    kept, kept_transport = server.connect()
    server.clock.advance(1)
    answered(kept)  # idle since 2 s
    server.clock.advance(1)
    newer, newer_transport = server.connect()  # idle since 3 s
    assert len(server.site.channels) == 3

    server.connect()
    assert silent_transport.disconnecting and not silent_transport.aborted
    assert not kept_transport.disconnecting and not newer_transport.disconnecting
    server.connect()
    assert kept_transport.disconnecting and not newer_transport.disconnecting
    assert len(server.site.channels) == 3
    lose(silent)  # The reactor's word that it is gone changes no count.
    lose(kept)
    assert len(server.site.channels) == 3


def test_at_the_cap_without_an_idle_one_the_longest_arriving_head_is_closed() -> None:
    server = make_server(max_connections=3)
    server.resource.hang = True
    busy, busy_transport = server.connect()
    answered(busy)  # Begun first, but under way: the resource has not answered.
    server.clock.advance(1)
    slow, slow_transport = server.connect()
    slow.dataReceived(b"GET /a HTTP/1.1\r\n")
    server.clock.advance(1)
    slower, slower_transport = server.connect()
    slower.dataReceived(b"GET /b HTTP/1.1\r\n")
    server.connect()
    assert slow_transport.disconnecting
    assert not busy_transport.disconnecting and not slower_transport.disconnecting


def test_pipelined_requests_leave_their_connection_idle_once_answered() -> None:
    server = make_server(max_connections=2)
    server.resource.hang = True
    busy, busy_transport = server.connect()
    answered(busy)
    server.resource.hang = False
    pipelined, pipelined_transport = server.connect()
    pipelined.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n" * 3)
    assert len(server.resource.seen) == 4
    server.connect()
    assert pipelined_transport.disconnecting and not busy_transport.disconnecting


def test_a_connection_that_closes_after_its_answer_is_not_counted_idle() -> None:
    server = make_server(max_connections=2)
    closing, closing_transport = server.connect()
    closing.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert closing_transport.disconnecting
    assert closing not in server.site.idle


def test_at_the_cap_with_every_request_under_way_a_new_one_is_refused_until_one_is_answered() -> (
    None
):
    server = make_server(max_connections=2)
    server.resource.hang = True
    first, first_transport = server.connect()
    answered(first)
    second, second_transport = server.connect()
    answered(second)
    assert server.build() is None
    assert not first_transport.disconnecting and not second_transport.disconnecting
    server.resource.pending[1].finish()  # the second is kept alive, idle
    assert second_transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    third, third_transport = server.connect()
    assert second_transport.disconnecting and not first_transport.disconnecting
    server.resource.hang = False
    answered(third)
    assert parse_response(third_transport.value()).body == b"ok"


def test_a_connection_lost_frees_its_place_at_the_cap() -> None:
    server = make_server(max_connections=1)
    server.resource.hang = True
    first, _ = server.connect()
    answered(first)
    assert server.build() is None
    lose(first)
    assert server.build() is not None


def test_a_client_address_at_its_bound_is_refused_and_others_are_not() -> None:
    server = make_server(max_connections_per_address=2)
    a1, _ = server.connect("10.0.0.1")
    a2, a2_transport = server.connect("10.0.0.1")
    assert server.build("10.0.0.1") is None
    assert not a2_transport.disconnecting  # Refused: nothing of its own is closed for it.
    server.connect("10.0.0.2")
    server.connect("::1")
    lose(a1)
    server.connect("10.0.0.1")
    assert server.build("10.0.0.1") is None


def test_an_address_has_no_bound_by_default(server: Server) -> None:
    for _ in range(16):
        server.connect("10.0.0.1")
    assert len(server.site.channels) == 16


def test_an_address_closed_to_make_room_frees_its_place_under_its_bound() -> None:
    server = make_server(max_connections=2, max_connections_per_address=1)
    server.connect("10.0.0.1")
    server.clock.advance(1)
    server.connect("10.0.0.2")
    server.connect("10.0.0.3")  # closes 10.0.0.1's, idle longest
    assert server.build("10.0.0.1") is not None


# Closing connections at shutdown


def test_close_connections_fires_at_once_without_connections(server: Server) -> None:
    d = server.site.close_connections(5.0)
    assert d.called
    assert server.clock.getDelayedCalls() == []


def test_close_connections_closes_each_and_fires_when_all_are_lost(server: Server) -> None:
    (a, a_transport), (b, b_transport) = server.connect(), server.connect()
    fired: list[object] = []
    server.site.close_connections(5.0).addCallback(fired.append)
    assert a_transport.disconnecting and b_transport.disconnecting
    assert not a_transport.aborted and not b_transport.aborted
    lose(a)
    assert fired == []
    lose(b)
    assert fired == [None]
    assert server.clock.getDelayedCalls() == []
    server.clock.advance(10.0)
    assert not a_transport.aborted and not b_transport.aborted


def test_close_connections_aborts_the_rest_after_its_timeout(server: Server) -> None:
    (a, a_transport), (b, b_transport) = server.connect(), server.connect()
    fired: list[object] = []
    server.site.close_connections(5.0).addCallback(fired.append)
    lose(a)
    server.clock.advance(4.99)
    assert not b_transport.aborted
    server.clock.advance(0.01)
    assert b_transport.aborted
    assert not a_transport.aborted
    assert fired == []
    lose(b)
    assert fired == [None]
    assert server.clock.getDelayedCalls() == []


def test_until_answered_fires_once_the_requests_under_way_are_answered() -> None:
    server = make_server()
    idle, idle_transport = server.connect()
    server.resource.hang = True
    busy, busy_transport = server.connect()
    answered(busy)
    server.site.wind_down()
    fired: list[object] = []
    server.site.until_answered(10.0).addCallback(fired.append)
    lose(idle)
    assert fired == []  # the request under way is not cut short
    finish(server.resource.pending[0])
    assert busy_transport.disconnecting and not busy_transport.aborted
    lose(busy)
    assert fired == [None]
    assert server.clock.getDelayedCalls() == []


def test_until_answered_gives_up_at_its_timeout_and_leaves_the_connection_open() -> None:
    server = make_server()
    server.resource.hang = True
    busy, busy_transport = server.connect()
    answered(busy)
    server.site.wind_down()
    fired: list[object] = []
    server.site.until_answered(3.0).addCallback(fired.append)
    server.clock.advance(2.99)
    assert fired == []
    server.clock.advance(0.01)
    assert fired == [None]
    assert not busy_transport.disconnecting and not busy_transport.aborted
    # The connections left are then closed as before, answers first.
    closed: list[object] = []
    server.site.close_connections(5.0).addCallback(closed.append)
    lose(busy)
    assert closed == [None]


def test_until_answered_fires_at_once_without_connections(server: Server) -> None:
    assert server.site.until_answered(5.0).called


@pytest.mark.parametrize("which", ["getHost", "getPeer"])
def test_a_channel_asks_its_transport_for_each_address_once(server: Server, which: str) -> None:
    proto, transport = server.connect()
    asked: list[object] = []
    address = getattr(transport, which)()

    def counted() -> object:
        asked.append(1)
        return address

    setattr(transport, which, counted)
    assert getattr(proto, which)() is address and getattr(proto, which)() is address
    assert asked == [1]


# Answered: what times each request (refresherd.http.common.observe)


class Answering(Resource):
    """A leaf that asks to be told when its request is answered; it answers, or never."""

    isLeaf = True

    def __init__(self, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang
        self.told: list[int] = []

    def render(self, request: Any) -> bytes | int:
        request.when_answered = lambda: self.told.append(request.code)
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(201)
        return b"ok"


def answering_server(hang: bool = False) -> tuple[Server, Answering]:
    server = make_server()
    resource = Answering(hang)
    server.site.resource = resource
    return server, resource


def test_a_request_is_told_once_when_it_is_answered() -> None:
    server, resource = answering_server()
    proto, transport = server.connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: refresherd.test\r\n\r\n" * 2)
    assert parse_response(transport.value()).status_line == b"HTTP/1.1 201 Created"
    assert resource.told == [201, 201]
    lose(proto)
    assert resource.told == [201, 201]


def test_a_request_whose_connection_is_lost_first_is_told_then() -> None:
    server, resource = answering_server(hang=True)
    proto, _ = server.connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
    assert resource.told == []
    lose(proto)
    assert resource.told == [200]


def test_a_failure_to_time_a_request_is_logged_and_the_answer_still_goes_out(
    no_logged_errors: list[dict[str, Any]],
) -> None:
    server = make_server()

    class Failing(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.when_answered = lambda: 1 / 0
            return b"ok"

    server.site.resource = Failing()
    proto, transport = server.connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: refresherd.test\r\n\r\n" * 2)
    first = parse_response(transport.value())
    second = parse_response(first.rest)  # Nothing written between them.
    assert (first.body, second.body, second.rest) == (b"ok", b"ok", b"")
    failures = [event["log_failure"].type for event in no_logged_errors]
    assert failures == [ZeroDivisionError, ZeroDivisionError]
    no_logged_errors.clear()


def test_requests_on_a_kept_alive_connection_do_not_set_a_deadline_timer_each(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []
    call_later = server.clock.callLater

    def counting(
        delay: float, f: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall:
        made.append(f)
        return call_later(delay, f, *args, **kwargs)

    monkeypatch.setattr(server.clock, "callLater", counting)
    proto, transport = server.connect()
    for _ in range(50):
        proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: refresherd.test\r\n\r\n")
        server.clock.advance(1)
    assert len(server.resource.seen) == 50
    assert not transport.disconnecting
    # twisted.web's idle timeout sets one timer per request; the deadlines of
    # 50 requests in 50 s add one per head timeout, and the connection's first.
    assert len(made) <= 50 + 1 + 50 / HEAD_TIMEOUT + 1


# twisted.web's own work, less what refresherd does not need


class Echo(Resource):
    """A leaf that answers what twisted.web made of the request, as JSON."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.postpath[-1:] == [b"boom"]:
            raise RuntimeError("boom")
        request.setHeader(b"Content-Type", b"application/json")
        seen = {
            "method": request.method,
            "uri": request.uri,
            "path": request.path,
            "args": sorted((k, v) for k, v in request.args.items()),
            "prepath": request.prepath,
            "postpath": request.postpath,
            "sitepath": request.sitepath,
            "body": request.content.read(),
            "root": request.site.resource is self,
        }
        return json.dumps(seen, default=bytes.decode).encode()


def tree() -> Resource:
    """A root with a child: twisted.web looks the child up."""
    root = Resource()
    root.putChild(b"echo", Echo())
    return root


def answers(site: Any, request: bytes) -> list[bytes]:
    """What C{site} writes back to C{request} on a new connection, Date aside."""
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(request)
    lines = transport.value().split(b"\r\n")
    return [line for line in lines if not line.startswith(b"Date: ")]


REQUESTS = [
    b"GET /echo/a%20b/c?x=1&x=2&y=&z HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /echo? HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD /echo/x?q=%41 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /echo?a=1 HTTP/1.1\r\nHost: h\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\nb=2",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /echo/boom HTTP/1.1\r\nHost: h\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", REQUESTS)
@pytest.mark.parametrize("root", [Echo, tree], ids=["leaf", "tree"])
def test_requests_are_what_twisted_web_makes_of_them(
    request_bytes: bytes, root: Callable[[], Resource], no_logged_errors: list[Any]
) -> None:
    """The shortcuts of LimitedRequest change nothing that a resource or client sees."""
    plain = answers(Site(root(), reactor=Clock()), request_bytes)
    limited = answers(_site_class[0](root(), lambda m, p: 100, reactor=Clock()), request_bytes)
    assert limited == plain
    assert plain[0].startswith(b"HTTP/1.1 ")
    if b"boom" in request_bytes:  # both logged the resource's failure
        assert len(no_logged_errors) == 2
        no_logged_errors.clear()


def test_only_a_plain_leaf_root_takes_the_short_way() -> None:
    assert LimitedSite(Echo(), lambda m, p: 0, reactor=Clock()).plain_leaf
    assert not LimitedSite(tree(), lambda m, p: 0, reactor=Clock()).plain_leaf
    wrapped = EncodingResourceWrapper(Echo(), [GzipEncoderFactory()])
    assert not LimitedSite(wrapped, lambda m, p: 0, reactor=Clock()).plain_leaf
    gzip = b"GET /echo HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n"
    assert b"Content-Encoding: gzip" in answers(
        LimitedSite(wrapped, lambda m, p: 0, reactor=Clock()), gzip
    )


def test_the_date_header_is_formatted_once_a_second_on_the_sites_clock(server: Server) -> None:
    server.clock.advance(1_796_300_000.25)
    proto, transport = server.connect()

    def date() -> bytes:
        transport.clear()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        return parse_response(transport.value()).headers[b"date"]

    first = date()
    assert first == datetimeToString(1_796_300_000) == b"Thu, 03 Dec 2026 12:13:20 GMT"
    formatted: list[float] = []

    def counted(seconds: float) -> bytes:
        formatted.append(seconds)
        return b"new"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(http, "datetimeToString", counted)
        server.clock.advance(0.7)
        assert date() == first  # the same second
        server.clock.advance(0.1)
        assert date() == b"new"
        assert date() == b"new"
    assert formatted == [1_796_300_001]


def test_a_get_parses_its_query_only_when_args_are_read(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[Any] = []

    def render(request: Any) -> bytes:
        kept.append(request)
        return b"ok"

    monkeypatch.setattr(server.resource, "render", render)
    proto, transport = server.connect()
    parsed: list[bytes] = []

    def parse_qs(query: bytes, *args: object) -> dict[bytes, list[bytes]]:
        parsed.append(query)
        return {b"a": [b"1"]}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(http, "parse_qs", parse_qs)
        proto.dataReceived(b"GET /?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert parse_response(transport.value()).body == b"ok"
        assert parsed == []
        assert kept[0].args == {b"a": [b"1"]}
        assert kept[0].args == {b"a": [b"1"]}
    assert parsed == [b"a=1"]


# Winding down when the process stops


def finish(request: Request) -> None:
    request.setHeader(b"content-length", b"2")
    request.write(b"ok")
    request.finish()


def test_winding_down_closes_idle_connections_and_the_others_after_their_answers() -> None:
    server = make_server()
    idle, idle_transport = server.connect()
    answered(idle)
    server.resource.hang = True
    busy, busy_transport = server.connect()
    answered(busy)  # its head came before the stop
    server.site.wind_down()
    assert idle_transport.disconnecting
    assert not busy_transport.disconnecting
    finish(server.resource.pending[0])
    assert busy_transport.disconnecting  # once its answer is out


def test_while_winding_down_an_answer_says_connection_close() -> None:
    server = make_server()
    server.resource.hang = True
    proto, transport = server.connect()
    proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\n")
    server.site.wind_down()
    proto.dataReceived(b"\r\n")
    finish(server.resource.pending[0])
    response = parse_response(transport.value())
    assert response.headers.get(b"connection") == b"close"
    assert transport.disconnecting
