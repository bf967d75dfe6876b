"""
End to end: what an untrusted client can make C{twistd -n refresherd} do on
its public listener, over real sockets.  A PUT without a token is refused at
its head; a request line or headers over the limits get their error objects;
silent connections from one address do not lock out a client on another.  The
same request sent again and again on one connection (answered from what was
kept of it) is answered as on a new connection, through new values and pipelining.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Service, start_service

MAX_CONNECTIONS = 20
CONFIG = f"""
[server]
max_connections = {MAX_CONNECTIONS}
head_timeout = "2s"

[auth]
write_tokens = ["w-token"]

[jobs.square]
args = ["n"]
fetch = "python"
callable = "refresherd.demo:slow_square"
fresh = "1m"

[jobs.note]
args = ["id"]
fetch = "python"
callable = "refresherd.demo:slow_square"
fresh = "1h"
writable = true
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    config: Path = tmp_path_factory.mktemp("clients") / "refresherd.toml"
    config.write_text(CONFIG)
    service = start_service(config)
    yield service
    service.stop()


def connect(service: Service, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the public listener from C{source}, a loopback address of this host."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", service.ports["public"]))
    return s


def answer(s: socket.socket) -> tuple[bytes, dict[str, str]]:
    """The status line and the error object of the one answer before the server closes."""
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)["error"]


def test_a_put_without_a_token_is_refused_at_its_head_without_waiting_for_its_body(
    service: Service,
) -> None:
    with connect(service) as s:
        s.sendall(
            b"PUT /v1/jobs/square?n=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 30000000\r\n\r\n"
        )
        started = time.monotonic()
        status, error = answer(s)
    assert time.monotonic() - started < 1
    assert status == b"HTTP/1.1 401 Unauthorized"
    assert error["code"] == "unauthorized"


def test_a_request_line_or_headers_over_the_limits_get_their_error_objects(
    service: Service,
) -> None:
    with connect(service) as s:
        s.sendall(b"GET /v1/jobs/square?n=" + b"1" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(s) == (
            b"HTTP/1.1 414 URI Too Long",
            {"code": "uri_too_long", "message": "the request line is longer than 16384 bytes"},
        )
    with connect(service) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        status, error = answer(s)
    assert (status, error["code"]) == (
        b"HTTP/1.1 431 Request Header Fields Too Large",
        "headers_too_large",
    )


def test_silent_connections_from_one_address_do_not_lock_out_another(service: Service) -> None:
    silent = [connect(service, "127.0.0.2") for _ in range(3 * MAX_CONNECTIONS)]
    try:
        # Every place is taken by 127.0.0.2, and its oldest connections made room for its newest.
        started = time.monotonic()
        response = httpx.get(service.url + "/healthz", timeout=5)
        assert response.status_code == 200
        assert time.monotonic() - started < 1
        silent[0].settimeout(1)
        assert silent[0].recv(1) == b""
    finally:
        for s in silent:
            s.close()


def test_a_connection_that_sends_no_whole_head_is_closed_at_the_head_timeout(
    service: Service,
) -> None:
    with connect(service) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            s.recv(1)
    assert 1.5 < time.monotonic() - started < 5


def read_answers(s: socket.socket, count: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """C{count} answers (each with a Content-Length) read from C{s}."""
    found: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
    data = b""
    while len(found) < count:
        while b"\r\n\r\n" not in data:
            data += s.recv(65536) or pytest.fail("closed")
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        length = int(headers[b"Content-Length"])
        while len(data) < length:
            data += s.recv(65536) or pytest.fail("closed")
        found.append((status, headers, data[:length]))
        data = data[length:]
    assert data == b""
    return found


def test_the_same_request_again_is_answered_as_on_a_new_connection(service: Service) -> None:
    request = b"GET /v1/jobs/note/raw?id=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(service) as kept:
        for value in (b'{"v": 1}', b'{"v": 2}', b'{"v": 3}'):
            put = httpx.put(
                service.url + "/v1/jobs/note?id=1",
                content=value,
                headers={"Authorization": "Bearer w-token", "Content-Type": "application/json"},
            )
            assert put.status_code in (200, 201, 204), put.text
            with connect(service) as new:
                new.sendall(request)
                [(status, headers, body)] = read_answers(new, 1)
            assert (status, body) == (b"HTTP/1.1 200 OK", value)
            for _ in range(3):  # the first time read, then known
                kept.sendall(request)
                [(again_status, again, again_body)] = read_answers(kept, 1)
                assert (again_status, again_body, again[b"ETag"]) == (
                    status,
                    body,
                    headers[b"ETag"],
                )
                assert again.keys() == headers.keys()
        kept.sendall(request * 3)  # pipelined: parsed, answered in order
        assert [body for _, _, body in read_answers(kept, 3)] == [b'{"v": 3}'] * 3
        kept.sendall(request)
        assert read_answers(kept, 1)[0][2] == b'{"v": 3}'
