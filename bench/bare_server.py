"""
Bare HTTP servers, the baselines of L{bench.throughput}: they answer fixed
bytes with fixed headers and do nothing else, so that the benchmark can
compare refresherd's hit path with what twisted.web and Klein cost alone.

    python -m bench.bare_server web|klein|protocol|fast --spec SPEC (--port N | --fd N)

- C{web}: one twisted.web L{Resource} (a leaf: no child lookup) that answers
  C{GET} with the body of the requested path, returned from C{render_GET}
  (so twisted.web sends a C{Content-Length}).
- C{klein}: a Klein app with one route per path of the spec, each returning
  its body (Klein writes it and finishes the request, as in refresherd).
- C{protocol}: the ceiling, no twisted.web at all: a plain Twisted
  L{Protocol} that answers every request head it receives (found by its
  blank line, nothing else parsed: no path, no method, no body) with the
  same bytes, those of the one path of the spec: C{HTTP/1.1 200 OK}, the
  spec's headers exactly as given (so they include C{Content-Length}), the
  body.  Requests on a kept-alive connection, pipelined or not, each get one.
- C{fast}: the same protocol read and written as refresherd's public
  listener reads and writes its connections: through a
  L{refresherd.http.reads.ReadMux} (not the reactor's per-read dispatch),
  each answer written to the socket at once when nothing waits before it,
  those made in one turn of the mux once the turn is done.

C{SPEC} is a JSON file: C{{"/path": {"body": "/file/of/the/body", "headers":
[["Name", "value"], ...]}, ...}}; the query string is ignored.  Both servers
web and Klein run a plain L{Site} whose per-request log line is turned off, as refresherd
turns off its own, on the default reactor.

C{--port N} listens on C{127.0.0.1:N} (0: a free port) with a backlog of
512; C{--fd N} accepts on the listening TCP socket inherited as file
descriptor N, which is how refresherd's C{--workers} share one socket: the
parent binds it and every worker adopts it (C{reactor.adoptStreamPort}).

Once it serves, the server prints C{bare: serving on HOST:PORT (pid N)}.
Its standard input is its lifeline: the server stops when it reaches end of
file, so that it never outlives the benchmark that started it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet import stdio
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from refresherd.http.reads import ReadMux
from refresherd.http.wire import HeldSender

Header = tuple[bytes, bytes]


class Answer:
    """The fixed answer of one path: its body and its headers."""

    def __init__(self, body: bytes, headers: list[Header]) -> None:
        self.body = body
        self.headers = headers

    def apply(self, request: IRequest | Request) -> bytes:
        for name, value in self.headers:
            request.setHeader(name, value)
        return self.body


def load_spec(path: Path) -> dict[bytes, Answer]:
    """The answers of a spec file, by path."""
    spec: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return {
        route.encode("utf-8"): Answer(
            Path(answer["body"]).read_bytes(),
            [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in answer["headers"]
            ],
        )
        for route, answer in spec.items()
    }


class Fixed(Resource):
    """The bare twisted.web resource: the fixed answer of the request's path."""

    isLeaf = True

    def __init__(self, answers: dict[bytes, Answer]) -> None:
        super().__init__()
        self.answers = answers

    def render_GET(self, request: Request) -> bytes:
        answer = self.answers.get(request.path)
        if answer is None:
            request.setResponseCode(404)
            return b"not found"
        return answer.apply(request)


def klein_resource(answers: dict[bytes, Answer]) -> Any:
    """The bare Klein app: one route per path, each returning its fixed answer."""
    app = Klein()
    for path, answer in answers.items():

        def route(request: IRequest, answer: Answer = answer) -> bytes:
            return answer.apply(request)

        app.route(path.decode("utf-8"), methods=["GET"], endpoint=path.decode("utf-8"))(route)
    return app.resource()


MAX_HEAD = 64 * 1024
"""The longest request head L{Ceiling} waits for; longer, the connection is closed."""


class Ceiling(Protocol):
    """Every request head answered with the same bytes, as soon as its end has arrived."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.pending = b""

    def dataReceived(self, data: bytes) -> None:
        data = self.pending + data
        heads = data.count(b"\r\n\r\n")
        if heads:
            data = data[data.rfind(b"\r\n\r\n") + 4 :]
            self.send(self.answer * heads)
        if len(data) > MAX_HEAD:
            self.transport.loseConnection()  # type: ignore[union-attr]
        self.pending = data

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class FastCeiling(HeldSender, Ceiling):
    """
    L{Ceiling} read and written as refresherd's public listener reads and
    writes: through a L{ReadMux}, its answers written to the socket at once
    when the transport holds nothing, those of one turn of the mux once the
    turn is done (L{HeldSender}, as refresherd writes them).
    """

    factory: CeilingFactory

    def connectionMade(self) -> None:
        self.factory.reads.adopt(self.transport)  # type: ignore[union-attr]
        self._socket = self.transport.socket

    def reads(self) -> ReadMux:
        assert self.factory.reads is not None
        return self.factory.reads


class CeilingFactory(Factory):
    """L{Ceiling} connections answering the spec's one answer."""

    noisy = False

    def __init__(self, answers: dict[bytes, Answer], reads: ReadMux | None = None) -> None:
        self.reads = reads
        """With a L{ReadMux}, its connections are L{FastCeiling}s."""
        if len(answers) != 1:
            raise SystemExit("bare: protocol answers one path: its spec must have exactly one")
        (answer,) = answers.values()
        head = b"".join(b"%s: %s\r\n" % header for header in answer.headers)
        self.answer = b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + answer.body

    def buildProtocol(self, addr: Any) -> Ceiling:
        protocol = (Ceiling if self.reads is None else FastCeiling)(self.answer)
        protocol.factory = self
        return protocol


class QuietSite(Site):
    """A Site that writes no line per request."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


class Lifeline(Protocol):
    """Standard input: its end of file stops the reactor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("kind", choices=["web", "klein", "protocol", "fast"])
    parser.add_argument("--spec", type=Path, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--fd", type=int)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    answers = load_spec(args.spec)
    factory: Any
    if args.kind == "protocol":
        factory = CeilingFactory(answers)
    elif args.kind == "fast":
        factory = CeilingFactory(answers, ReadMux(reactor))
    else:
        factory = QuietSite(Fixed(answers) if args.kind == "web" else klein_resource(answers))
    r: Any = reactor
    if args.fd is not None:
        # Twisted accepts until EAGAIN: on a blocking socket the reactor would hang in accept().
        os.set_blocking(args.fd, False)
        port = r.adoptStreamPort(args.fd, socket.AF_INET, factory)
        os.close(args.fd)  # The port has its own copy.
    else:
        port = r.listenTCP(args.port, factory, backlog=512, interface="127.0.0.1")
    stdio.StandardIO(Lifeline(r))
    host = port.getHost()
    print(f"bare: serving on {host.host}:{host.port} (pid {os.getpid()})", flush=True)
    r.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
