"""
The TCP proxy of the fault-injection tests (tests/tcp_proxy.py), on an echo
server: it forwards, holds every byte while paused, cuts connections, and
loses answers.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.tcp_proxy import TcpProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with TcpProxy(("127.0.0.1", server.server_address[1])) as proxy:
            yield proxy
    finally:
        server.shutdown()
        server.server_close()


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=5)


def test_it_forwards_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as client:
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
    assert proxy.accepted == 1


def test_paused_it_forwards_nothing_and_keeps_the_connection_then_resumes(
    proxy: TcpProxy,
) -> None:
    with connect(proxy) as client:
        client.sendall(b"one")
        assert client.recv(16) == b"one"
        proxy.pause()
        client.sendall(b"two")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(16)
        client.settimeout(5)
        proxy.resume()
        assert client.recv(16) == b"two"


def test_paused_it_accepts_no_connection_until_resumed(proxy: TcpProxy) -> None:
    proxy.pause()
    with connect(proxy) as client:  # the kernel completes the handshake
        client.sendall(b"early")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(16)
        assert proxy.accepted == 0
        client.settimeout(5)
        proxy.resume()
        assert client.recv(16) == b"early"


def test_cut_closes_every_connection_and_new_ones_go_through(proxy: TcpProxy) -> None:
    with connect(proxy) as one, connect(proxy) as two:
        for client in (one, two):
            client.sendall(b"x")
            assert client.recv(16) == b"x"
        assert proxy.connections == 2
        proxy.cut()
        assert one.recv(16) == b"" and two.recv(16) == b""
        assert proxy.connections == 0
    with connect(proxy) as three:
        three.sendall(b"y")
        assert three.recv(16) == b"y"


def test_it_loses_the_answers_from_a_request_with_the_marker_on_until_told(
    proxy: TcpProxy,
) -> None:
    with connect(proxy) as client, connect(proxy) as other:
        client.sendall(b"one")
        assert client.recv(16) == b"one"
        proxy.lose_answers_after(b"NX")
        client.sendall(b"two")
        assert client.recv(16) == b"two"  # no marker yet
        client.sendall(b"SET NX")
        other.sendall(b"three")
        for sock in (client, other):
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(16)  # the request went through (the echo answered): its answer is lost
        assert proxy.lost == len(b"SET NX") + len(b"three")
        proxy.answer()
        for sock in (client, other):
            sock.settimeout(5)
            sock.sendall(b"four")
            assert sock.recv(16) == b"four"
