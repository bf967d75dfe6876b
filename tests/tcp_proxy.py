"""
A TCP proxy for fault injection, run by the test in a thread of its own:
put between refresherd and a store, it forwards bytes both ways until told to
pause (connections stay open, nothing is forwarded or accepted: a network
that went silent), resume, cut (every connection closed at once, as a
broken network or a restarted server would), or lose the answers (what the
store says is dropped from some request on, while requests still reach it:
a command carried out whose answer never came back).

    with TcpProxy(("127.0.0.1", redis.port)) as proxy:
        ...  # refresherd connects to proxy.address
        proxy.pause()  # from here on, not one byte goes through
        proxy.resume()
        proxy.cut()
        proxy.lose_answers_after(b"$2\r\nNX\r\n")  # from the next SET ... NX on
        proxy.answer()

Each control call returns once the proxy's thread has applied it.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading
from collections.abc import Callable

import attrs

CHUNK = 65536
SEND_TIMEOUT = 5.0
"""Seconds a peer that does not read may block the proxy before its connection is closed."""


@attrs.define(eq=False)
class TcpProxy:
    """
    Forwards every connection accepted on C{127.0.0.1:port} to C{upstream}.

    @ivar port: the port it listens on, chosen by L{start}.
    @ivar accepted: how many connections it has accepted.
    @ivar lost: how many bytes of answers it has dropped.
    """

    upstream: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 0
    accepted: int = attrs.field(default=0, init=False)
    lost: int = attrs.field(default=0, init=False)
    _listener: socket.socket | None = attrs.field(default=None, init=False)
    _selector: selectors.BaseSelector = attrs.field(factory=selectors.DefaultSelector, init=False)
    _peers: dict[socket.socket, socket.socket] = attrs.field(factory=dict, init=False)
    _paused: bool = attrs.field(default=False, init=False)
    _clients: set[socket.socket] = attrs.field(factory=set, init=False)
    _lose_after: bytes | None = attrs.field(default=None, init=False)
    _losing: bool = attrs.field(default=False, init=False)
    _commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = attrs.field(
        factory=queue.SimpleQueue, init=False
    )
    _wake: tuple[socket.socket, socket.socket] | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _stopping: bool = attrs.field(default=False, init=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """How many client connections are open through it."""
        return len(self._peers) // 2

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wake = socket.socketpair()
        self._selector.register(self._wake[0], selectors.EVENT_READ)
        self._selector.register(listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop forwarding and accepting; connections stay open."""
        self._control(self._pause)

    def resume(self) -> None:
        """Forward and accept again (what was sent meanwhile goes through now)."""
        self._control(self._resume)

    def cut(self) -> None:
        """Close every connection (new ones are still accepted, unless paused)."""
        self._control(self._cut)

    def lose_answers_after(self, marker: bytes) -> None:
        """
        From the first request that holds C{marker} on (that request is
        forwarded), drop every answer, on every connection, until L{answer}.
        """

        def lose() -> None:
            self._lose_after = marker

        self._control(lose)

    def answer(self) -> None:
        """Forward answers again."""

        def answer() -> None:
            self._lose_after = None
            self._losing = False

        self._control(answer)

    def stop(self) -> None:
        """Close every connection and the listener, and end the thread."""
        if self._thread is None:
            return
        self._control(self._stop)
        self._thread.join(5)
        self._thread = None
        assert self._wake is not None
        for end in self._wake:
            end.close()
        self._selector.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- in the proxy's thread ------------------------------------------------

    def _control(self, command: Callable[[], None]) -> None:
        done = threading.Event()
        self._commands.put((command, done))
        assert self._wake is not None
        self._wake[1].send(b"x")
        if not done.wait(10):
            raise AssertionError("the proxy's thread did not answer")

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if self._wake is not None and sock is self._wake[0]:
                    # Select again: the rest of this batch was ready before the
                    # command (a pause must not forward or accept one more).
                    self._obey()
                    break
                if sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)

    def _obey(self) -> None:
        assert self._wake is not None
        self._wake[0].recv(CHUNK)
        while not self._commands.empty():
            command, done = self._commands.get()
            command()
            done.set()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        try:
            server = socket.create_connection(self.upstream, timeout=SEND_TIMEOUT)
        except OSError:
            client.close()
            return
        for end in (client, server):
            end.settimeout(SEND_TIMEOUT)
            self._selector.register(end, selectors.EVENT_READ)
        self._peers[client] = server
        self._peers[server] = client
        self._clients.add(client)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(CHUNK)
            if data:
                if sock in self._clients:
                    if self._lose_after is not None and self._lose_after in data:
                        self._losing = True
                elif self._losing:
                    self.lost += len(data)
                    return
                peer.sendall(data)
                return
        except OSError:
            pass
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock)
        del self._peers[peer]
        self._clients.difference_update((sock, peer))
        for end in (sock, peer):
            if not self._paused:
                self._selector.unregister(end)
            end.close()

    def _pause(self) -> None:
        if self._paused:
            return
        assert self._listener is not None
        for sock in [self._listener, *self._peers]:
            self._selector.unregister(sock)
        self._paused = True

    def _resume(self) -> None:
        if not self._paused:
            return
        assert self._listener is not None
        for sock in [self._listener, *self._peers]:
            self._selector.register(sock, selectors.EVENT_READ)
        self._paused = False

    def _cut(self) -> None:
        while self._peers:
            self._close(next(iter(self._peers)))

    def _stop(self) -> None:
        self._cut()
        self._resume()
        assert self._listener is not None
        self._selector.unregister(self._listener)
        self._listener.close()
        self._stopping = True
