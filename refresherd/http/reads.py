"""
The public listener's connections read through one descriptor of the reactor's.

Twisted's reactor wraps each read it dispatches in a logging context (the
connection's log prefix, set and restored around the call) and a dispatch
of the event: about as much Python, per request of the public listener, as
the answer to a hit.  A L{ReadMux} is one reader of the reactor's, an
C{epoll} instance of its own: the plain TCP and UNIX connections of the
public listener read from it, and when the reactor finds it readable it
reads every connection that is ready, each as the reactor would (the same
C{doRead}, the same ends of a connection), without those wrappers.  Writes,
timers and everything else stay the reactor's: a connection's transport
still asks the reactor to write what the socket did not take at once.

Only where C{select.epoll} exists (Linux); elsewhere, and for any other
transport (TLS), the reactor reads the connection as before.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import error, tcp, unix
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_DISCONNECTED = getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)
_IN = getattr(select, "EPOLLIN", 0)
BATCH = 256
"""The most connections one turn of the reactor reads (the rest at the next)."""
HELD = 32
"""The most writers one turn holds the writes of at once (L{ReadMux.hold}); then released."""


class Holder(Protocol):
    """What writes what it holds when told (L{ReadMux.hold})."""

    def release(self) -> None:
        """Write what it holds, now."""


class _Muxed:
    """A transport whose reads its L{ReadMux} watches for, not the reactor."""

    _mux: ReadMux

    def startReading(self) -> None:
        self._mux.add(self)

    def stopReading(self) -> None:
        self._mux.remove(self)


class _MuxedTCP(_Muxed, tcp.Server):
    pass


class _MuxedUNIX(_Muxed, unix.Server):
    pass


_MUXED: dict[type, type] = {tcp.Server: _MuxedTCP, unix.Server: _MuxedUNIX}


@implementer(IReadDescriptor)
class ReadMux:
    """
    One reader of C{reactor}'s reading the connections L{adopt}ed: an
    C{epoll} instance of its own (made when the first comes, kept until
    L{close}), a reader of the reactor's while it watches a connection.
    """

    _log = Logger()

    def __init__(self, reactor: IReactorFDSet) -> None:
        self._reactor: Any = reactor
        self._poll: Any = None
        self._members: dict[int, Any] = {}
        self._fds: dict[Any, int] = {}
        self._held: list[Holder] | None = None

    @staticmethod
    def usable() -> bool:
        return hasattr(select, "epoll")

    def adopt(self, transport: Any) -> bool:
        """
        Read C{transport}, a connection just made (reading, as a new server
        connection is), from now on if it is a plain TCP or UNIX server
        connection of this reactor's; whether it is.  Should the system
        refuse to watch it (no descriptor left, no memory), the reactor
        reads it as before.
        """
        plain = type(transport)
        muxed = _MUXED.get(plain)
        if muxed is None or transport.reactor is not self._reactor or not self.usable():
            return False
        transport.stopReading()
        transport.__class__ = muxed
        transport._mux = self
        try:
            transport.startReading()
        except OSError:
            transport.__class__ = plain
            transport.startReading()
            self._log.failure(
                "Cannot watch {connection}: the reactor reads it", connection=transport.logPrefix()
            )
            return False
        return True

    def add(self, transport: Any) -> None:
        if transport in self._fds:
            return
        fd = transport.fileno()
        if fd < 0:
            return
        if self._poll is None:
            self._poll = select.epoll()
        self._poll.register(fd, _IN)
        if not self._members:
            self._reactor.addReader(self)
        self._members[fd] = transport
        self._fds[transport] = fd

    def remove(self, transport: Any) -> None:
        fd = self._fds.pop(transport, None)
        if fd is None:
            return
        del self._members[fd]
        try:
            self._poll.unregister(fd)
        except OSError:
            pass  # (closed already: epoll forgot it then)
        if not self._members:
            self._reactor.removeReader(self)

    def close(self) -> None:
        """Close its C{epoll} instance if it watches nothing (the listener stopped)."""
        if self._poll is not None and not self._members:
            self._poll.close()
            self._poll = None

    def watching(self) -> int:
        """How many connections it reads."""
        return len(self._members)

    def hold(self, holder: Holder) -> bool:
        """
        During a turn (connections being read), have C{holder} L{release
        <Holder.release>} what it writes once the turn is done (or L{HELD}
        others hold writes), and say so; else C{False}: it writes now.

        The answers of a turn go out together: when one wakes the client
        (the process that reads them), the others find it awake, where each
        written as soon as it is made would wake it again.
        """
        held = self._held
        if held is None:
            return False
        if len(held) >= HELD:
            self._release()
            held = self._held = []
        held.append(holder)
        return True

    def _release(self) -> None:
        held, self._held = self._held or [], None
        for holder in held:
            try:
                holder.release()
            except BaseException:
                self._log.failure("Writing held answers of {holder} failed", holder=holder)

    # -- IReadDescriptor -----------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._poll is None else self._poll.fileno()

    def logPrefix(self) -> str:
        return "ReadMux"

    def doRead(self) -> None:
        """Every connection ready read once (at most L{BATCH}), each as the reactor reads one."""
        if self._poll is None:
            return
        self._held = []
        try:
            self._read_ready()
        finally:
            self._release()

    def _read_ready(self) -> None:
        members = self._members
        for fd, event in self._poll.poll(0, BATCH):
            transport = members.get(fd)
            if transport is None:  # (stopped reading since: an earlier one's doing)
                continue
            why: Any = None
            if event & _DISCONNECTED and not event & _IN:
                why = error.ConnectionDone()  # (all it sent was read)
            else:
                try:
                    why = transport.doRead()
                except BaseException:
                    why = Failure()
                    self._log.failure(
                        "Reading {connection} failed", why, connection=transport.logPrefix()
                    )
                    why = why.value
            if why:
                # Not read again (a half-closed connection stays open, unread).
                self.remove(transport)
                self._end(transport, self._reactor._disconnectSelectable, transport, why, True)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor's stop (C{disconnectAll}): every connection it reads loses its connection."""
        for transport in list(self._members.values()):
            self.remove(transport)
            self._end(transport, transport.connectionLost, reason)

    def _end(self, transport: Any, end: Callable[..., object], *args: Any) -> None:
        """C{end(*args)}, an end of C{transport}: a failure (a bug) is logged, ends nothing else."""
        try:
            end(*args)
        except BaseException:
            self._log.failure("Ending {connection} failed", connection=transport.logPrefix())
