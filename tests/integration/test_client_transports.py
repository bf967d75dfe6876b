"""
The client's own transports on real sockets: L{refresherd.client.HTTPTransport}
(under L{Client}) and L{refresherd.client.AsyncHTTPTransport} (under
L{AsyncClient}), against a scripted HTTP/1.1 server on a loopback port whose
answer depends on the path: kept-alive connections reused, a connection the
server closed replaced, chunked bodies, C{Connection: close}, a server that
never answers (the timeout), a port nothing listens on, many threads at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import trustme

from refresherd.client import (
    AsyncClient,
    AsyncHTTPTransport,
    Client,
    HTTPTransport,
    Unauthorized,
    Unreachable,
)
from tests.harness import wait_until

HIT = {"job": "j", "key": "rfd:j:v1:", "status": "hit", "value": 1}


class Scripted:
    """A threaded HTTP/1.1 server answering each request as its path says."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.tls = tls
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.ended = 0
        self.requests: list[bytes] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            if self.tls is not None:
                try:
                    connection = self.tls.wrap_socket(connection, server_side=True)
                except OSError:
                    connection.close()
                    continue
            threading.Thread(target=self.serve, args=(connection,), daemon=True).start()

    def serve(self, connection: socket.socket) -> None:
        try:
            self.converse(connection)
        finally:
            with self.lock:
                self.ended += 1

    def converse(self, connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                path = head.split(b" ")[1].split(b"?")[0]
                if path.endswith(b"/refused"):  # answered at its head, the body left unread
                    body = json.dumps({"error": {"code": "unauthorized", "message": "no"}})
                    connection.sendall(
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body.encode())
                    )
                    return
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                buffer = buffer[length:]
                with self.lock:
                    self.requests.append(head)
                if not self.answer(connection, path):
                    return

    def answer(self, connection: socket.socket, path: bytes) -> bool:
        """Answer on C{connection}; False when the connection is to end."""
        body = json.dumps(HIT).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if path.endswith(b"/silent"):
            self.stopping.wait(10)
            return False
        if path.endswith(b"/chunked"):
            half = len(body) // 2
            chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                half,
                body[:half],
                len(body) - half,
                body[half:],
            )
            connection.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
            return True
        if path.endswith(b"/closing"):
            connection.sendall(
                head + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return False
        connection.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        # /dropped: kept alive by its head, then closed while idle, as a server's idle timeout does.
        return not path.endswith(b"/dropped")

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    yield scripted
    scripted.stop()


Get = Callable[..., Any]


def sync_gets(url: str, **options: Any) -> Iterator[Get]:
    """C{get} of a L{Client}; with C{put=BODY}, a C{put} of it instead."""
    with Client(url, url, **options) as client:

        def get(job: str, put: bytes | None = None, **kwargs: Any) -> Any:
            return client.get(job, **kwargs) if put is None else client.put(job, put)

        yield get


def async_gets(url: str, **options: Any) -> Iterator[Get]:
    """As L{sync_gets}, of an L{AsyncClient}, each call run to its end on one event loop."""
    loop = asyncio.new_event_loop()
    client = AsyncClient(url, url, **options)

    def get(job: str, put: bytes | None = None, **kwargs: Any) -> Any:
        coroutine: Awaitable[Any] = (
            client.get(job, **kwargs) if put is None else client.put(job, put)
        )
        return loop.run_until_complete(coroutine)

    try:
        yield get
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


CLIENTS = pytest.mark.parametrize("gets", [sync_gets, async_gets], ids=["Client", "AsyncClient"])


@CLIENTS
def test_a_kept_alive_connection_serves_the_next_requests(
    server: Scripted, gets: Callable[..., Iterator[Get]]
) -> None:
    for get in gets(server.url):
        assert [get("ok", n=i) for i in range(3)] == [HIT] * 3
    assert server.connections == 1
    assert [head.split(b"\r\n")[0] for head in server.requests] == [
        f"GET /v1/jobs/ok?n={i} HTTP/1.1".encode() for i in range(3)
    ]


@CLIENTS
def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: Scripted, gets: Callable[..., Iterator[Get]]
) -> None:
    for get in gets(server.url):
        assert get("dropped") == HIT
        assert get("ok") == HIT
        assert get("dropped") == HIT
        assert get("ok") == HIT
    assert server.connections == 3


@CLIENTS
def test_chunked_bodies_and_connection_close_are_read(
    server: Scripted, gets: Callable[..., Iterator[Get]]
) -> None:
    for get in gets(server.url):
        assert get("chunked") == HIT
        assert get("closing") == HIT
        assert get("ok") == HIT
    assert server.connections == 2


@CLIENTS
def test_a_server_that_never_answers_is_unreachable_at_the_timeout(
    server: Scripted, gets: Callable[..., Iterator[Get]]
) -> None:
    for get in gets(server.url, timeout=0.2):
        with pytest.raises(Unreachable) as raised:
            get("silent")
        assert raised.value.message == f"no answer from {server.url} within 0.2 s"
        assert get("silent", default="fallback") == "fallback"
        assert get("ok") == HIT  # a new connection: the timed-out one is closed


@CLIENTS
def test_a_port_nothing_listens_on_is_unreachable(gets: Callable[..., Iterator[Get]]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for get in gets(url):
        with pytest.raises(Unreachable) as raised:
            get("ok")
        assert raised.value.message == f"cannot reach {url}: connection refused"


def test_threads_share_one_client_each_request_on_a_connection_of_its_own(
    server: Scripted,
) -> None:
    with Client(server.url, server.url) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: client.get("ok", n=n), range(200)))
    assert answers == [HIT] * 200
    assert 1 <= server.connections <= 8
    assert len(server.requests) == 200


def test_async_tasks_share_one_client() -> None:
    scripted = Scripted()

    async def main() -> list[Any]:
        async with AsyncClient(scripted.url, scripted.url) as client:
            return await asyncio.gather(*(client.get("ok", n=n) for n in range(50)))

    try:
        assert asyncio.run(main()) == [HIT] * 50
        assert 1 <= scripted.connections <= 50 and len(scripted.requests) == 50
    finally:
        scripted.stop()


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents(
    server: Scripted,
) -> None:
    with Client(server.url, server.url) as client:
        assert client.get("ok") == HIT
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if its request was answered right
            try:
                os._exit(0 if client.get("ok", n="child") == HIT else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.get("ok", n="parent") == HIT
    assert server.connections == 2
    assert [head.split(b"\r\n")[0] for head in server.requests][1:] == [
        b"GET /v1/jobs/ok?n=child HTTP/1.1",
        b"GET /v1/jobs/ok?n=parent HTTP/1.1",
    ]


def test_a_kept_connection_on_a_descriptor_above_1024_is_reused(server: Scripted) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("this process may not open 2048 files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    held: list[int] = []
    try:
        while len(held) < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with Client(server.url, server.url) as client:
            assert [client.get("ok"), client.get("ok")] == [HIT, HIT]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert server.connections == 1


def test_an_async_client_used_by_one_event_loop_after_another_keeps_only_the_live_ones(
    server: Scripted,
) -> None:
    client = AsyncClient(server.url, server.url)
    pools = client._transport._idle  # type: ignore[attr-defined]
    for _ in range(3):
        assert asyncio.run(client.get("ok")) == HIT
        assert len(pools) == 1  # the closed loops' connections are forgotten
    assert server.connections == 3
    wait_until(lambda: server.ended == 2)  # and shut down: the server saw them end


@CLIENTS
def test_an_answer_sent_before_the_body_was_taken_is_read_after_the_failed_write(
    server: Scripted, gets: Callable[..., Iterator[Get]]
) -> None:
    """A PUT refused at its head (401): its error object, not a reset connection."""
    body = b"x" * 30_000_000
    for get in gets(server.url):
        assert get("ok") == HIT  # a kept connection, as for the PUT that follows
        with pytest.raises(Unauthorized) as raised:
            get("refused", put=body)
        assert (raised.value.status, raised.value.message) == (401, "no")
        assert get("ok") == HIT


@CLIENTS
def test_a_kept_tls_connection_serves_the_next_requests(
    gets: Callable[..., Iterator[Get]],
) -> None:
    authority = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(served)
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    server = Scripted(tls=served)
    transport = HTTPTransport(trusted) if gets is sync_gets else AsyncHTTPTransport(trusted)
    try:
        for get in gets(server.url, transport=transport):
            assert [get("ok", n=i) for i in range(3)] == [HIT] * 3
        assert server.connections == 1
    finally:
        server.stop()
