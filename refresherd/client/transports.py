"""
How L{refresherd.client.Client} reaches the service: L{HTTPTransport}, the
standard library's C{http.client} over a small pool of kept-alive connections
per listener (the default), and L{HttpxTransport}, any C{httpx} transport (an
C{httpx.MockTransport} in tests).  Each sends a L{Request} and brings back its
L{Response}, or raises a L{TransportError}.
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from refresherd.client.calls import (
    Failure,
    Origin,
    Request,
    Response,
    TransportError,
    failure_of,
)

if TYPE_CHECKING:
    import httpx

MAX_IDLE = 16
"""Idle connections kept per listener; more, once their requests are done, are closed."""


class Transport(Protocol):
    """Sends a request and brings back its answer (L{TransportError} if none)."""

    def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response: ...

    def close(self) -> None: ...


class HTTPTransport:
    """
    C{http.client} connections, kept alive and reused: a request takes an idle
    connection of its listener (or opens one), and gives it back when its
    answer is read, unless the service closes it.  Thread-safe: a connection
    serves one request at a time.  A kept connection the service closed while
    it was idle is replaced before it is used, and a request that finds it
    closed anyway is sent again once on a new connection (it had no answer).
    C{context} verifies C{https://} listeners (the system's certificates by
    default).  In a process forked from the one that opened them (a server's
    workers forked after the client was used), the connections kept are left
    to the parent, and the child opens its own.
    """

    def __init__(self, context: ssl.SSLContext | None = None, max_idle: int = MAX_IDLE) -> None:
        self._context = context
        self._max_idle = max_idle
        self._idle: dict[str, deque[http.client.HTTPConnection]] = {}
        self._closed = False
        self._pid = os.getpid()

    def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._pid != os.getpid():
            self._forked()
        origin = request.origin
        idle = self._idle.get(origin.base)
        if idle is None:
            idle = self._idle.setdefault(origin.base, deque())
        while True:
            try:
                connection = idle.pop()
            except IndexError:
                connection, reused = self._connect(origin, connect_timeout), False
            else:
                reused = True
                if _dropped(connection):
                    connection.close()
                    continue
            try:
                if connection.timeout != timeout:  # a system call: only when it changes
                    connection.sock.settimeout(timeout)
                    connection.timeout = timeout
                try:
                    connection.request(request.method, request.target, request.body, headers)
                except (BrokenPipeError, ConnectionResetError):
                    # Refused at its head (a 401 before a large body was taken): the
                    # answer may have come before the connection was closed.
                    early = _answer_after_failed_write(connection)
                    if early is None:
                        raise
                    answer, body = early
                    connection.close()
                    return Response(answer.status, answer.reason, answer.msg, body)
                answer = connection.getresponse()
                body = answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                connection.close()
                if reused:
                    continue  # closed by the service as the request went: no answer was sent
                if isinstance(e, http.client.RemoteDisconnected):
                    raise TransportError(Failure.CLOSED) from None
                raise failure_of(e) from None
            except OSError as e:
                connection.close()
                raise failure_of(e) from None
            except http.client.HTTPException as e:
                connection.close()
                raise TransportError(Failure.OTHER, f"a bad answer ({type(e).__name__})") from None
            except BaseException:
                connection.close()
                raise
            if answer.will_close or self._closed or len(idle) >= self._max_idle:
                connection.close()
            else:
                idle.append(connection)
            return Response(answer.status, answer.reason, answer.msg, body)

    def _forked(self) -> None:
        """In a child process: the parent's connections are the parent's; close our copies."""
        self._pid = os.getpid()
        parents, self._idle = self._idle, {}
        for idle in parents.values():
            for connection in idle:
                connection.close()

    def _connect(self, origin: Origin, connect_timeout: float) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if origin.scheme == "https":
            if self._context is None:  # made once: it reads the system's certificates
                self._context = ssl.create_default_context()
            context = self._context
            connection = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=connect_timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(
                origin.host, origin.port, timeout=connect_timeout
            )
        try:
            connection.connect()
        except TimeoutError:
            connection.close()
            raise TransportError(Failure.CONNECT_TIMEOUT) from None
        except OSError as e:
            connection.close()
            raise failure_of(e) from None
        return connection

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their request is done."""
        self._closed = True
        for idle in list(self._idle.values()):
            while idle:
                try:
                    idle.pop().close()
                except IndexError:
                    break


def _answer_after_failed_write(
    connection: http.client.HTTPConnection,
) -> tuple[http.client.HTTPResponse, bytes] | None:
    """The answer the service sent before it closed the connection a request was sent on."""
    try:
        answer = connection.getresponse()
        return answer, answer.read()
    except (OSError, http.client.HTTPException):
        return None


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """True if an idle connection was closed by the service (or has bytes no request asked for)."""
    sock = connection.sock
    if sock is None:
        return True
    if hasattr(select, "poll"):  # any descriptor, however high (select() stops at 1024)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


class HttpxTransport:
    """
    Requests through an C{httpx} transport (C{httpx.MockTransport} in tests,
    C{httpx.HTTPTransport} to compare): the client as it was before
    L{HTTPTransport}.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        import httpx

        self._httpx = httpx
        self._client = httpx.Client(transport=transport, follow_redirects=False)

    def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response:
        httpx = self._httpx
        try:
            answer = self._client.request(
                request.method,
                request.url,
                headers=headers,
                content=request.body,
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
            )
        except httpx.ConnectTimeout:
            raise TransportError(Failure.CONNECT_TIMEOUT) from None
        except httpx.TimeoutException:
            raise TransportError(Failure.TIMEOUT) from None
        except httpx.RemoteProtocolError:
            raise TransportError(Failure.CLOSED) from None
        except httpx.TransportError as e:
            raise failure_of(OSError(str(e))) from None
        return Response(answer.status_code, answer.reason_phrase, answer.headers, answer.content)

    def close(self) -> None:
        self._client.close()


def transport_of(given: Any) -> Transport:
    """The transport of a client: L{HTTPTransport} by default, an httpx transport adapted."""
    if given is None:
        return HTTPTransport()
    if hasattr(given, "send") and hasattr(given, "close") and not hasattr(given, "handle_request"):
        return given  # type: ignore[no-any-return]
    return HttpxTransport(given)
