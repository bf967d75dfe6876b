"""The public listening socket, held by the parent and adopted by each worker."""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs
from twisted.internet import defer, tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from refresherd.errors import ConfigError
from refresherd.run.workers.options import FAMILIES


def shareable(endpoint: object) -> bool:
    """Whether workers can share the sockets of C{endpoint}: TCP and UNIX endpoints only."""
    return isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint | UNIXServerEndpoint)


@attrs.frozen
class SharedSocket:
    """A listening socket of the parent, for its workers to adopt."""

    fd: int
    family: str
    """A key of L{FAMILIES}."""


def family_of(address: IAddress) -> str:
    """The name (in L{FAMILIES}) of the address family of a listening port's address."""
    if isinstance(address, IPv4Address):
        return "inet"
    if isinstance(address, IPv6Address):
        return "inet6"
    if isinstance(address, UNIXAddress):
        return "unix"
    raise ValueError(f"cannot share a socket listening on {address!r}")


class HeldForWorkers(Factory):
    """The factory of the parent's copy of the public listener, on which it never accepts."""

    noisy = False


def hold(port: IListeningPort) -> SharedSocket:
    """
    Keep the listening socket of C{port} for the workers: the parent never
    accepts a connection on it.
    """
    listening: Any = port
    listening.stopReading()
    return SharedSocket(listening.fileno(), family_of(port.getHost()))


def release(port: IListeningPort) -> Deferred[None]:
    """
    Close the parent's copy of a socket held for the workers, without
    shutting the socket down: a shutdown would stop the workers' copies too,
    which still answer what they accepted.  (A UNIX socket's file goes: the
    parent made it.)
    """
    listening: Any = port
    listening._shouldShutdown = False
    stopped: Deferred[None] = defer.maybeDeferred(listening.stopListening)
    return stopped


class InheritedUNIXPort(unix.Port):
    """
    A UNIX port on a listening socket inherited from the parent.

    Twisted's own adopted UNIX port would listen again (with its default
    backlog), make the file world-writable, shut the socket down when it
    stops (for every worker at once) and delete the file; the parent owns
    the file and set all of that up.
    """

    def __init__(self, fd: int, factory: IProtocolFactory, reactor: Any) -> None:
        self._inherited = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
        super().__init__(self._inherited.getsockname(), factory, reactor=reactor)

    def startListening(self) -> None:
        factory: Any = self.factory
        factory.doStart()
        self.connected = True
        self.socket = self._inherited
        self.fileno = self.socket.fileno  # type: ignore[method-assign]
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        self._shouldShutdown = False
        tcp.Port.connectionLost(self, reason)


def adopt(reactor: Any, fd: int, family: str, factory: IProtocolFactory) -> IListeningPort:
    """
    Accept connections on the listening socket inherited as C{fd} (then
    closed: the port has its own copy).  A worker stopping closes its copy
    only, never the socket the others share.
    """
    try:
        port: IListeningPort
        if family == "unix":
            unix_port = InheritedUNIXPort(fd, factory, reactor)
            unix_port.startListening()
            port = unix_port
        else:
            port = reactor.adoptStreamPort(fd, FAMILIES[family], factory)
    except OSError as e:
        raise ConfigError(
            f"--worker-fd: cannot adopt file descriptor {fd}: {e.strerror or e}"
        ) from None
    os.close(fd)
    return port
