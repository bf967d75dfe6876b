"""
The Redis store on the primary that Redis Sentinel names
(C{redis+sentinel://[[user]:password@]host1:26379,host2:26379/SERVICE[/DB]},
docs/redis.md, "Sentinel").

L{SentinelEndpoint} is the store's endpoint: at every (re)connection it asks
every sentinel, at the same time and each within a deadline, where the
primary of the service is (C{SENTINEL get-master-addr-by-name}); takes the
address the most sentinels name (L{primary_candidates}, pure); confirms on
that server that it is a primary (C{ROLE}); and only then connects to it.
When no sentinel answers, none knows the service, or the address is not a
primary, the connection attempt fails with a one-line reason, and the store's
reconnection (every second at most) asks again: after a failover, the store
finds the new primary by itself.  While connected, it asks the sentinels
again every L{CHECK_INTERVAL} seconds, and closes the connections to a
primary they no longer name (a planned failover leaves the old one up,
accepting writes, for several seconds).

How a sentinel or a server is reached is a function of its host and port
(L{SentinelEndpoint.sentinel_endpoint}, L{SentinelEndpoint.server_endpoint}),
so that TLS can wrap them, verifying the name the operator configured rather
than an address a sentinel reported.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import unquote

import attrs
import txredisapi
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from refresherd.errors import one_line
from refresherd.stores.reader import DEFAULT_MAX_ENTRY_BYTES
from refresherd.stores.redis import DEFAULT_CONNECT_TIMEOUT, RedisStore
from refresherd.stores.redis_urls import credentials
from refresherd.stores.tls import TLS_OPTIONS, tls_failure, tls_options

DEFAULT_SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 1.0
"""Seconds a sentinel, or the server it names, has to answer (connection included)."""
CHECK_INTERVAL = 2.0
"""
How often, while connected, the sentinels are asked again whether the
primary is still the one in use (a planned failover leaves the old one up).
"""

Address = tuple[str, int]


class NoPrimary(Exception):
    """No primary can be used now; the message (one line) says why."""


@attrs.frozen
class Answer:
    """
    What one sentinel said of the service: the primary it names, or L{None}
    when it does not know the service; or C{error}, why it said nothing usable.
    """

    sentinel: str
    primary: Address | None = None
    error: str | None = None


def primary_candidates(service: str, answers: Sequence[Answer]) -> list[Address]:
    """
    The addresses to try as the primary of C{service}, given what the
    sentinels said: those named by the most sentinels (several only when they
    tie), in the order of the answers.  L{NoPrimary} when no sentinel answered
    or none named a primary.
    """
    named = [a.primary for a in answers if a.primary is not None]
    if not named:
        if any(a.error is None for a in answers):
            raise NoPrimary(f"no sentinel knows the service {service!r}")
        errors = "; ".join(f"{a.sentinel}: {a.error}" for a in answers)
        raise NoPrimary(f"no sentinel answered ({errors})")
    votes = Counter(named)
    most = max(votes.values())
    return [address for address in votes if votes[address] == most]


def show(address: Address) -> str:
    """C{host:port}, with brackets around an IPv6 host."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOST = re.compile(rb"[A-Za-z0-9.:_-]{1,253}")


def parse_address(reply: Any) -> Address | None:
    """
    The address in a reply to C{SENTINEL get-master-addr-by-name}: C{None}
    (nil) when the sentinel does not know the service; L{ValueError} when the
    reply is not an address.
    """
    if reply is None:
        return None
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and isinstance(reply[0], bytes)
        and isinstance(reply[1], bytes)
        and _HOST.fullmatch(reply[0])
        and reply[1].isdigit()
        and 0 < int(reply[1][:6]) < 65536
    ):
        return reply[0].decode("ascii"), int(reply[1])
    raise ValueError("answered something that is not an address")


def is_primary(reply: Any) -> bool:
    """Whether a reply to C{ROLE} is a primary's."""
    return isinstance(reply, list) and bool(reply) and reply[0] == b"master"


@implementer(IStreamClientEndpoint)
@attrs.define(eq=False)
class SentinelEndpoint:
    """
    Connects to the primary of C{service} that the sentinels name and that
    says it is one.

    @ivar sentinels: the sentinels' addresses, in the configured order.
    @ivar auth: the C{AUTH} arguments of the sentinels (empty: none).
    @ivar server_auth: the C{AUTH} arguments of the Redis servers (for C{ROLE}).
    @ivar timeout: seconds each sentinel, and the server named, has to answer.
    """

    reactor: Any = attrs.field(repr=False)
    service: str
    sentinels: Sequence[Address]
    auth: Sequence[str] = attrs.field(default=(), repr=False)
    server_auth: Sequence[str] = attrs.field(default=(), repr=False)
    timeout: float = SENTINEL_TIMEOUT
    sentinel_endpoint: Callable[[str, int], IStreamClientEndpoint] | None = attrs.field(
        default=None, repr=False
    )
    """How to reach a sentinel (default: TCP with the timeout)."""
    server_endpoint: Callable[[str, int], IStreamClientEndpoint] | None = attrs.field(
        default=None, repr=False
    )
    """How to reach the server a sentinel names (default: TCP, DEFAULT_CONNECT_TIMEOUT)."""

    check_interval: float = CHECK_INTERVAL

    _log: ClassVar[Logger] = Logger()
    primary: Address | None = attrs.field(init=False, default=None)
    """The primary last connected to."""
    _trouble: str | None = attrs.field(init=False, repr=False, default=None)
    _live: set[Any] = attrs.field(init=False, repr=False, factory=set)
    """The connections made to L{primary} that are still open."""
    _checks: task.LoopingCall | None = attrs.field(init=False, repr=False, default=None)
    _check: Deferred[None] | None = attrs.field(init=False, repr=False, default=None)

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        """Find the primary, then connect C{factory} to it; fails with L{NoPrimary}."""
        d = Deferred.fromCoroutine(self._find())
        d.addCallback(self._connect, factory)
        return d.addErrback(self._failed)

    async def _answers(self) -> list[Answer]:
        asked = [Deferred.fromCoroutine(self._ask_sentinel(a)) for a in self.sentinels]
        answers: list[Answer] = await defer.gatherResults(asked)
        return answers

    async def _find(self) -> Address:
        refused: list[str] = []
        for candidate in primary_candidates(self.service, await self._answers()):
            why = await self._not_primary(candidate)
            if why is None:
                return candidate
            refused.append(f"{show(candidate)} {why}")
        raise NoPrimary(
            f"the primary the sentinels name for {self.service!r} cannot be used: "
            + "; ".join(refused)
        )

    async def _ask_sentinel(self, address: Address) -> Answer:
        where = show(address)
        command = ("SENTINEL", "get-master-addr-by-name", self.service)
        try:
            reply = await exchange(
                self.reactor,
                self._sentinel(address),
                [*self._auth(self.auth), command],
                self.timeout,
            )
            return Answer(where, parse_address(reply[-1]))
        except Exception as e:  # no answer, refused, an error reply, not an address
            return Answer(where, error=one_line(str(e) or type(e).__name__, 120))

    async def _not_primary(self, address: Address) -> str | None:
        """Why C{address} is not to be used as the primary (None: it is one)."""
        try:
            reply = await exchange(
                self.reactor,
                self._server(address),
                [*self._auth(self.server_auth), ("ROLE",)],
                self.timeout,
            )
        except Exception as e:
            return f"did not answer ROLE: {one_line(str(e) or type(e).__name__, 200)}"
        if is_primary(reply[-1]):
            return None
        role = reply[-1][0] if isinstance(reply[-1], list) and reply[-1] else reply[-1]
        shown = role.decode("ascii", "replace")[:20] if isinstance(role, bytes) else "?"
        return f"is not a primary (ROLE: {shown})"

    def _connect(self, address: Address, factory: IProtocolFactory) -> Deferred[Any]:
        if address != self.primary:
            self._log.info(
                "Sentinel: the primary of {service} is at {address}",
                service=self.service,
                address=show(address),
            )
        self.primary = address
        self._trouble = None
        return self._server(address).connect(factory).addCallback(self._track)

    # -- while connected: is the primary still the one the sentinels name? --

    def _track(self, connection: Any) -> Any:
        """Check every L{check_interval} seconds while C{connection} is open."""
        self._live.add(connection)
        connection.whenDisconnected().addBoth(lambda _: self._untrack(connection))
        if self._checks is None:
            self._checks = task.LoopingCall(self._check_primary)
            self._checks.clock = self.reactor
            self._checks.start(self.check_interval, now=False)
        return connection

    def _untrack(self, connection: Any) -> None:
        self._live.discard(connection)
        if self._live or self._checks is None:
            return
        checks, self._checks = self._checks, None
        if checks.running:
            checks.stop()
        if self._check is not None:
            self._check.cancel()

    def _check_primary(self) -> Deferred[None]:
        """
        Ask the sentinels again; when the address most of them name is no
        longer the primary in use, close its connections, so that the store
        reconnects to the new one.  Sentinels that do not answer change nothing.
        """

        async def check() -> None:
            try:
                candidates = primary_candidates(self.service, await self._answers())
            except NoPrimary:
                return
            if self.primary in candidates or not self._live:
                return
            self._log.info(
                "Sentinel: the sentinels now name {new} as the primary of {service}; leaving {old}",
                new=show(candidates[0]),
                service=self.service,
                old=show(self.primary) if self.primary else "?",
            )
            for connection in list(self._live):
                connection.transport.loseConnection()

        def done(result: object) -> None:
            self._check = None
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self._log.failure("Sentinel: checking the primary failed", result)

        if self._check is None:  # else the last one is still under way
            self._check = Deferred.fromCoroutine(check())
            self._check.addBoth(done)
        return defer.succeed(None)

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(NoPrimary):
            why = one_line(str(failure.value))
            if why != self._trouble:
                self._trouble = why
                self._log.warn("Sentinel: {why}", why=why)
        return failure

    @staticmethod
    def _auth(auth: Sequence[str]) -> list[tuple[str, ...]]:
        return [("AUTH", *auth)] if auth else []

    def _sentinel(self, address: Address) -> IStreamClientEndpoint:
        if self.sentinel_endpoint is not None:
            return self.sentinel_endpoint(*address)
        return HostnameEndpoint(self.reactor, *address, timeout=self.timeout)

    def _server(self, address: Address) -> IStreamClientEndpoint:
        if self.server_endpoint is not None:
            return self.server_endpoint(*address)
        return HostnameEndpoint(self.reactor, *address, timeout=DEFAULT_CONNECT_TIMEOUT)


class _Unanswered(Exception):
    pass


class _Exchange(txredisapi.RedisProtocol):  # type: ignore[misc]
    """A connection that remembers why it was lost (a TLS failure tells why)."""

    lost: Failure | None = None

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason
        super().connectionLost(reason)


def exchange(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    commands: Sequence[Sequence[str]],
    timeout: float,
) -> Deferred[list[Any]]:
    """
    Connect, run C{commands} one after the other, and disconnect: their
    replies (bytes), all within C{timeout} seconds.  An error reply fails
    with C{txredisapi.ResponseError}; no answer in time with a one-line reason.
    """
    protocol = _Exchange(charset=None, convertNumbers=False)
    connecting: Deferred[Any] = connectProtocol(endpoint, protocol)
    expired = []

    def expire() -> None:
        expired.append(True)
        if not connecting.called:
            connecting.cancel()
        elif protocol.transport is not None:
            protocol.transport.abortConnection()

    timer = reactor.callLater(timeout, expire)

    async def run() -> list[Any]:
        await connecting
        return [await protocol.execute_command(*command) for command in commands]

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        if expired and isinstance(result, Failure):
            return Failure(_Unanswered(f"no answer within {timeout:g} s"))
        tls = None if protocol.lost is None else tls_failure(protocol.lost)
        if tls is not None and isinstance(result, Failure):
            return Failure(_Unanswered(tls))
        return result

    return Deferred.fromCoroutine(run()).addBoth(done)


# -- the URL -----------------------------------------------------------------

SCHEME = "redis+sentinel"
TLS_SCHEME = "rediss+sentinel"
OPTIONS = ("sentinel_user", "sentinel_password")
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")


def sentinel_store_from_url(
    url: str,
    namespace: str,
    reactor: Any,
    environ: Mapping[str, str],
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> RedisStore:
    """
    The L{RedisStore} of C{redis+sentinel://[[user]:password@]host[:port],.../SERVICE[/DB]
    [?sentinel_user=...&sentinel_password=...]}: on the primary of
    C{SERVICE} that the sentinels name (port 26379 and db 0 by default).
    The user information is the Redis servers'; the options are the
    sentinels' own credentials (when they have any).  C{rediss+sentinel://}
    speaks TLS to the sentinels and to the servers, with the TLS options of
    C{rediss://}: each sentinel's certificate is checked against its host in
    the URL, and every server's against C{server_name}, which is required
    (never against an address a sentinel reported).  Passwords are
    percent-decoded; C{env:NAME} reads one from C{environ}.  Anything wrong
    is a L{ValueError} whose message is one line and never shows a password.
    """
    scheme = url.partition("://")[0].lower()
    tls = scheme == TLS_SCHEME
    what = f"the {scheme if tls else SCHEME} store URL"
    if scheme not in (SCHEME, TLS_SCHEME) or "://" not in url:
        raise ValueError(f"{what} must start with {SCHEME}:// or {TLS_SCHEME}://")
    rest = url[len(scheme) + 3 :]
    hint = " (percent-encode any of : / ? # @ in a password)" if "@" in rest else ""
    if any(c in rest.rpartition("@")[0] for c in "/?#"):
        raise ValueError(f"{what}: percent-encode any of : / ? # @ in a password")
    if "#" in rest:
        raise ValueError(f"{what} takes no fragment")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    sentinels = _sentinels(hosts, what, hint)
    segments = path.split("/") if slash else []
    if not segments or not segments[0]:
        raise ValueError(
            f"{what} needs the service name after the sentinels: "
            f"{SCHEME}://host:26379,host:26379/SERVICE/0"
        )
    if not _SERVICE.fullmatch(segments[0]):
        raise ValueError(f"{what}: the service name must be letters, digits, '.', '_' or '-'")
    if len(segments) > 2 or (len(segments) == 2 and not re.fullmatch(r"[0-9]{1,9}", segments[1])):
        raise ValueError(f"{what} path must be /SERVICE or /SERVICE/DB (a database number)")
    db = int(segments[1]) if len(segments) == 2 else 0
    user, password = None, None
    if at:
        name, colon, secret = userinfo.partition(":")
        if not colon:
            raise ValueError(f"{what} gives a user name but no password: write :password@")
        user, password = credentials(name or None, secret, environ, what)
    options = _options(query, what, (*OPTIONS, *TLS_OPTIONS) if tls else OPTIONS)
    if "sentinel_user" in options and "sentinel_password" not in options:
        raise ValueError(f"{what}: sentinel_user needs sentinel_password")
    sentinel_auth: tuple[str, ...] = ()
    if "sentinel_password" in options:
        sentinel_user, sentinel_password = credentials(
            options.get("sentinel_user"), options["sentinel_password"], environ, what
        )
        assert sentinel_password is not None
        sentinel_auth = (*([sentinel_user] if sentinel_user else []), sentinel_password)
    service = segments[0]
    endpoint = SentinelEndpoint(
        reactor,
        service,
        sentinels,
        auth=sentinel_auth,
        server_auth=() if password is None else (*([user] if user else []), password),
    )
    warning = None
    if tls:
        warning = _tls(endpoint, {k: unquote(v) for k, v in options.items()}, what)
    return RedisStore(
        reactor,
        service,
        db=db,
        password=password,
        namespace=namespace,
        max_entry_bytes=max_entry_bytes,
        endpoint=endpoint,
        label=f"the primary of {service} (Sentinel)",
        username=user,
        warning=warning,
    )


def _tls(endpoint: SentinelEndpoint, options: Mapping[str, str], what: str) -> str | None:
    """
    Make C{endpoint} reach its sentinels and servers over TLS: each sentinel
    checked against its own host, every server against C{server_name}.  The
    warning to log at start (C{insecure}), if any.
    """
    if "server_name" not in options:
        raise ValueError(
            f"{what} needs server_name=, the name the servers' certificates are for "
            "(a sentinel reports addresses, which are never trusted for it)"
        )
    server = tls_options(options, options["server_name"], what)
    sentinels = {
        address: tls_options({**options, "server_name": address[0]}, address[0], what)
        for address in endpoint.sentinels
    }
    reactor, timeout = endpoint.reactor, endpoint.timeout
    endpoint.sentinel_endpoint = lambda host, port: sentinels[(host, port)].wrap(
        HostnameEndpoint(reactor, host, port, timeout=timeout)
    )
    endpoint.server_endpoint = lambda host, port: server.wrap(
        HostnameEndpoint(reactor, host, port, timeout=DEFAULT_CONNECT_TIMEOUT)
    )
    return server.warning(f"the primary of {endpoint.service} (Sentinel)")


def _sentinels(hosts: str, what: str, hint: str) -> list[Address]:
    """The C{host[:port],...} of a URL: at least one, each port from 1 to 65535."""
    if not hosts:
        raise ValueError(f"{what} has no sentinel: {SCHEME}://host:26379,host:26379/SERVICE")
    found: list[Address] = []
    for item in hosts.split(","):
        match = _HOST_PORT.fullmatch(item)
        port = int(match.group(2) or DEFAULT_SENTINEL_PORT) if match else 0
        if match is None or not 0 < port < 65536:
            raise ValueError(
                f"{what}: each sentinel is host or host:port (port from 1 to 65535), "
                f"separated by commas{hint}"
            )
        host = match.group(1).strip("[]")
        if (host, port) in found:
            raise ValueError(f"{what} names the sentinel {show((host, port))} twice")
        found.append((host, port))
    return found


def _options(query: str, what: str, known: Sequence[str]) -> dict[str, str]:
    """The known options of the query (raw, percent-encoded), each once; never a value shown."""
    options: dict[str, str] = {}
    for param in query.split("&") if query else []:
        if not param:
            continue
        name, equals, value = param.partition("=")
        if name not in known:
            hint = f" (TLS needs {TLS_SCHEME}://)" if name in TLS_OPTIONS else ""
            raise ValueError(
                f"{what} takes no option {name[:40]!r}{hint}; it takes {', '.join(known)}"
            )
        if name in options:
            raise ValueError(f"{what} gives {name} twice")
        if not equals or not value:
            raise ValueError(f"{what}: {name} needs a value ({name}=...)")
        options[name] = value
    return options
