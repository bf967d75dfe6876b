"""
L{refresherd.client.AsyncClient} on a fake transport (the calls it shares with
L{refresherd.client.Client} are tested in test_client.py), the pure pieces of
those calls (L{refresherd.client.calls}: failures, origins, queries), and
L{refresherd.client.http11}, the HTTP/1.1 it speaks on asyncio streams, on
streams fed by hand.  No network.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
import pytest

from refresherd.client import (
    AsyncClient,
    BadArgs,
    CircuitOpen,
    FetchFailed,
    Pending,
    Raw,
    Unreachable,
)
from refresherd.client.calls import (
    Failure,
    Origin,
    Request,
    Response,
    TransportError,
    failure_of,
)
from refresherd.client.http11 import BadAnswer, Caseless, read_answer, request_head

T = TypeVar("T")

HIT = {"job": "tweets", "key": "rfd:tweets:v1:username=bob", "status": "hit", "value": [1]}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def answer(status: int, document: Any, **headers: str) -> Response:
    return Response(
        status,
        "OK",
        Caseless({k.lower(): v for k, v in headers.items()}),
        json.dumps(document).encode(),
    )


@attrs.define
class FakeTransport:
    """Answers each request with C{answer(request)}; keeps what it was sent."""

    answer: Callable[[Request], Response]
    sent: list[tuple[Request, dict[str, str], float]] = attrs.Factory(list)
    closed: bool = False
    hang: bool = False
    """Never answer (until cancelled)."""

    async def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response:
        self.sent.append((request, headers, timeout))
        if self.hang:
            await asyncio.Event().wait()
        return self.answer(request)

    async def aclose(self) -> None:
        self.closed = True


def refuse(request: Request) -> Response:
    raise TransportError(Failure.REFUSED)


def make(
    respond: Callable[[Request], Response], **options: Any
) -> tuple[AsyncClient, FakeTransport]:
    transport = FakeTransport(respond)
    return AsyncClient(transport=transport, token="t0ken", **options), transport


def test_get_sends_the_request_of_client_get_and_returns_the_answer() -> None:
    client, transport = make(lambda request: answer(200, HIT))
    assert run(client.get("tweets", username="bob")) == HIT
    [(request, headers, timeout)] = transport.sent
    assert (request.method, request.target, request.body) == (
        "GET",
        "/v1/jobs/tweets?username=bob",
        None,
    )
    assert request.origin.base == "http://127.0.0.1:8080"
    assert headers["Authorization"] == "Bearer t0ken" and timeout == 10.0


def test_value_raw_and_get_many_read_their_answers_as_the_sync_client_does() -> None:
    def respond(request: Request) -> Response:
        if request.path == "/v1/fetch":
            assert json.loads(request.body or b"") == {
                "items": [{"job": "tweets", "args": {"username": "bob"}}, {"job": "x", "args": {}}]
            }
            error = {"error": {"code": "fetch_failed", "message": "origin down"}}
            return answer(200, {"items": [HIT, error]})
        if request.path.endswith("/raw"):
            return Response(200, "OK", Caseless({"content-type": "text/html"}), b"<p>")
        return answer(200, HIT)

    client, _ = make(respond)
    assert run(client.value("tweets", username="bob")) == [1]
    assert run(client.raw("sidebar")) == Raw(b"<p>", "text/html")
    many = run(client.get_many([("tweets", {"username": "bob"}), "x"]))
    assert many[0] == HIT and isinstance(many[1], FetchFailed)
    assert run(client.get_many([("tweets", {"username": "bob"}), "x"], default=None)) == [HIT, None]
    assert run(client.get_many([])) == []


def test_a_default_covers_an_outage_and_a_pending_value_but_never_a_mistake() -> None:
    error = {"error": {"code": "bad_args", "message": "no"}}
    client, _ = make(lambda request: answer(400, error))
    with pytest.raises(BadArgs):
        run(client.get("tweets", default=None))
    down, _ = make(refuse)
    assert run(down.get("tweets", default="fallback")) == "fallback"
    pending = {"job": "s", "key": "rfd:s:v1:", "status": "pending"}
    waiting, _ = make(lambda request: answer(202, pending))
    assert run(waiting.value("s", default="later")) == "later"
    with pytest.raises(Pending):
        run(waiting.value("s"))


def test_after_three_failures_the_circuit_opens_and_fails_at_once() -> None:
    now = [0.0]
    client, transport = make(refuse, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(Unreachable) as raised:
            run(client.get("tweets"))
        assert raised.value.message == "cannot reach http://127.0.0.1:8080: connection refused"
    with pytest.raises(CircuitOpen):
        run(client.get("tweets"))
    assert len(transport.sent) == 3 and client.circuit() == "open"
    now[0] += 5
    transport.answer = lambda request: answer(200, HIT)
    assert run(client.get("tweets")) == HIT and client.circuit() == "closed"


def test_a_cancelled_trial_request_lets_another_trial_through() -> None:
    now = [0.0]
    client, transport = make(refuse, clock=lambda: now[0], circuit_failures=1)
    with pytest.raises(Unreachable):
        run(client.get("tweets"))
    now[0] += 5

    async def cancel_a_trial() -> str:
        transport.hang = True
        trial = asyncio.ensure_future(client.get("tweets"))
        await asyncio.sleep(0)
        state = client.circuit()
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        return state

    assert run(cancel_a_trial()) == "half-open"
    assert client.circuit() == "open"  # no trial under way: the next request may be one
    transport.hang, transport.answer = False, lambda request: answer(200, HIT)
    assert run(client.get("tweets")) == HIT


def test_aclose_closes_the_transport_and_the_repr_hides_the_token() -> None:
    async def use() -> FakeTransport:
        client, transport = make(lambda request: answer(200, HIT))
        async with client:
            assert "t0ken" not in repr(client)
        return transport

    assert run(use()).closed


# -- http11 ---------------------------------------------------------------------------------


def read(data: bytes, method: str = "GET") -> Any:
    async def go() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_answer(reader, method)

    return run(go())


def test_request_head_names_the_host_and_the_length_of_a_body() -> None:
    assert request_head("GET", "/v1/jobs/a?x=1", "h:8080", {"Accept": "*/*"}, None) == (
        b"GET /v1/jobs/a?x=1 HTTP/1.1\r\nHost: h:8080\r\nAccept: */*\r\n\r\n"
    )
    assert request_head("POST", "/v1/purge", "h", {}, b"{}").endswith(
        b"\r\nContent-Length: 2\r\n\r\n"
    )
    assert b"Content-Length: 0" in request_head("POST", "/r", "h", {}, None)


def test_an_answer_with_a_length_is_read_and_its_connection_kept() -> None:
    got = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nhiNEXT")
    assert (got.status, got.reason, got.body, got.keep) == (200, "OK", b"hi", True)
    assert got.headers.get("X-A") == "1, 2"


def test_a_chunked_answer_is_joined_and_its_trailers_skipped() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n"
    )
    assert read(data).body == b"abc0123456789"


@pytest.mark.parametrize(
    ("data", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n\r\nto the end", False),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", True),
    ],
)
def test_whether_a_connection_is_kept_and_where_a_body_ends(data: bytes, keep: bool) -> None:
    got = read(data)
    assert got.keep is keep
    assert got.body == (b"to the end" if data.endswith(b"to the end") else b"")


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    ],
)
def test_bytes_that_are_not_an_http_answer_are_a_bad_answer(data: bytes) -> None:
    with pytest.raises(BadAnswer):
        read(data)


def test_an_answer_cut_short_is_an_incomplete_read() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(asyncio.IncompleteReadError):
        read(b"")


# -- the shared calls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "failure", "reason"),
    [
        (TimeoutError("timed out"), Failure.TIMEOUT, ""),
        (ConnectionRefusedError(111, "Connection refused"), Failure.REFUSED, ""),
        (socket.gaierror(-2, "Name or service not known"), Failure.UNKNOWN_HOST, ""),
        (
            ConnectionResetError(104, "Connection reset\nby peer"),
            Failure.OTHER,
            "[Errno 104] Connection reset by peer",
        ),
        (OSError(), Failure.OTHER, "OSError"),
    ],
)
def test_a_socket_error_becomes_the_failure_a_message_names(
    error: OSError, failure: Failure, reason: str
) -> None:
    got = failure_of(error)
    assert (got.failure, got.reason) == (failure, reason)


def test_an_origin_knows_its_host_header_prefix_and_credentials() -> None:
    origin = Origin.of("https://user:p%40ss@cache.example/rfd")
    assert (origin.scheme, origin.host, origin.port, origin.prefix) == (
        "https",
        "cache.example",
        443,
        "/rfd",
    )
    assert origin.shown == "https://cache.example/rfd" and origin.host_header == "cache.example"
    assert origin.basic == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert Origin.of("http://[::1]:8080").host_header == "[::1]:8080"


def test_the_token_and_not_the_urls_credentials_is_the_authorization() -> None:
    transport = FakeTransport(lambda request: answer(200, HIT))
    with_token = AsyncClient("http://u:p@h:1", transport=transport, token="t0ken")
    without = AsyncClient("http://u:p@h:1", transport=transport)
    run(with_token.get("j"))
    run(without.get("j"))
    assert [headers["Authorization"] for _, headers, _ in transport.sent] == [
        "Bearer t0ken",
        "Basic " + base64.b64encode(b"u:p").decode(),
    ]


def test_a_query_encodes_every_byte_but_the_unreserved_ones() -> None:
    transport = FakeTransport(lambda request: answer(200, HIT))
    client = AsyncClient(transport=transport)
    run(client.get("j", {"a b": "x/y+é", "plain": "A-z_0.9~"}))
    assert transport.sent[0][0].target == "/v1/jobs/j?a%20b=x%2Fy%2B%C3%A9&plain=A-z_0.9~"
