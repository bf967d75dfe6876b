"""A worker's lifeline to its parent: ready when it serves, stopped when the parent goes."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from refresherd.errors import ConfigError

READY = b"ready"
"""What a worker says on its lifeline once it serves."""


class OneConnection(Factory):
    """A factory for one connection, whose protocol is already made."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


class Lifeline(Protocol):
    """
    A worker's end of its lifeline.  It tells the parent when the worker is
    ready; the parent closing it (or dying) calls C{on_lost}.
    """

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost

    def ready(self) -> None:
        """Tell the parent that this worker serves."""
        if self.transport is not None:
            self.transport.write(READY + b"\r\n")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._on_lost()


def connect_lifeline(reactor: Any, fd: int, on_lost: Callable[[], None]) -> Lifeline:
    """The lifeline inherited as C{fd} (then closed: the connection has its own copy)."""
    lifeline = Lifeline(on_lost)
    try:
        reactor.adoptStreamConnection(fd, socket.AF_UNIX, OneConnection(lifeline))
    except OSError as e:
        raise ConfigError(
            f"--worker-lifeline: cannot adopt file descriptor {fd}: {e.strerror or e}"
        ) from None
    os.close(fd)
    return lifeline
