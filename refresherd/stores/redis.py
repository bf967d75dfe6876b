"""
The shared store on one Redis server (its URLs: L{refresherd.stores.redis_urls}).

The layout other programs read is documented in C{docs/redis.md}:

    key K                          ->  encode(entry), expiring after the ttl given to put
    {ns}:lease:{rest of K}         ->  the token of the fetch that holds K's lease
    PUBLISH {namespace}:changes K  on every change of K, for other programs
    PUBLISH {namespace}:purges N   a purge notice N (refresherd.core.notices), heard by all

where C{ns} is K's own namespace (the text before its first C{:}) and
C{namespace} the store's.  Every change is one Lua script, so it is atomic
without MULTI (which is broken with hiredis and C{charset=None}).

Talking to Redis is txredisapi's (bytes in, bytes out: C{charset=None},
C{convertNumbers=False}), with hiredis when installed, on two connections:
one for commands and one subscribed to C{__redis__:invalidate} (and to the
purge notices, C{{namespace}:purges}: L{IPurgeNotices}).  The command
connection turns on Redis's client-side caching, C{CLIENT TRACKING on
REDIRECT <the subscriber's id> NOLOOP}: Redis then tells this process, on its
subscriber, of every change made by another client to a key that this process
read (GET, MGET, and keys read inside scripts) since it was last told of it.
So a change reaches the processes that read its key, not every process.  Both
connections do their own AUTH (and SELECT, for commands) on every connection,
so a reconnection after a restart is ready again without help, and a refused
AUTH is retried rather than stopping the store for good.  A Redis Cluster
node (C{INFO cluster}) is refused the same way: its keys live in slots spread
over several primaries, and every script here names an entry and its lease
together.

Tracking lives and dies with the command connection, and its messages with
the subscriber: whenever either is (re)made, tracking is redirected again to
the current subscriber, and once Redis has accepted it, everything that may
have missed a change is reset (waiters woken, near caches dropped).  Losing
either connection drops the near caches at once.

Every call has a deadline: it fails with L{StoreUnavailable} at once while the
command connection is down, and within C{timeout} seconds when Redis does not
answer.

txredisapi keeps its own timers (reply timeouts, reconnection delays) on the
global reactor, so this store is for the real reactor, not a C{task.Clock}.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import txredisapi
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from refresherd.core.marks import GENERATION_MARGIN, renewed
from refresherd.entry import Entry, encode
from refresherd.errors import StoreUnavailable, one_line
from refresherd.interfaces import IPurgeNotices, IStore
from refresherd.stores.reader import DEFAULT_MAX_ENTRY_BYTES, EntryReader
from refresherd.stores.tls import tls_failure
from refresherd.stores.waiters import ChangeWaiters

DEFAULT_PORT = 6379
DEFAULT_TIMEOUT = 2.0
"""Seconds a call may take before it fails with L{StoreUnavailable}."""
DEFAULT_CONNECT_TIMEOUT = 2.0
REPLICA_WAIT = 1.0
"""How long a purge or a PUT waits for a replica to acknowledge it (C{WAIT}),
when the primary has replicas."""
ROLE_INTERVAL = 5.0
"""How often the primary is asked how many replicas it has (C{ROLE})."""

CLOSED_UNANSWERED = (
    "it closed a new connection without answering (if that port wants TLS: rediss://)"
)
"""Why calls fail while new connections are closed before their handshake is answered."""
INVALIDATIONS = "__redis__:invalidate"
"""The channel on which Redis tells a tracking client's redirect of changed keys."""

RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
"""Reconnection delays grow from the first to the second (txredisapi's are 1 s to 10 s)."""

# Every script takes the entry key and its lease key as KEYS; the change
# channel is the fourth argument of the puts and the last one of the others.
# A ttl of 0 ms deletes the entry.
# The puts take the generation keys the entry renews (core.marks.renewed) as
# further KEYS, and how long they must live at least (ms) as ARGV[3]: one that
# exists and would expire sooner lives that long.
_RENEW = """
for i = 3, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left > 0 and left < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  end
end
"""

_PUT = (
    """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
"""
    + _RENEW
    + """
else
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""
)

_PUT_FENCED = (
    """
if redis.call('GET', KEYS[2]) ~= ARGV[5] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
"""
    + _RENEW
    + """
else
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""
)

_DELETE = """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[1], KEYS[1])
return existed
"""

_NEW_GENERATION = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], KEYS[1])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


CLUSTER_NODE = (
    "it is a Redis Cluster node, and refresherd needs a single primary (see docs/scaling.md)"
)
"""Why calls fail while the server is a Redis Cluster node (see L{cluster_enabled})."""


def cluster_enabled(info: object) -> bool:
    """
    Whether C{info}, the reply to C{INFO cluster}, says C{cluster_enabled:1}.
    Anything else (another value, no such line, a reply that is not bytes)
    is not a Cluster node.
    """
    if not isinstance(info, bytes):
        return False
    return any(line.strip() == b"cluster_enabled:1" for line in info.splitlines())


def _tokens(keys: Sequence[str], values: Sequence[bytes | None]) -> dict[str, str]:
    """The generation tokens of C{keys} from an C{MGET} of them."""
    return {
        key: value.decode("ascii", "replace")
        for key, value in zip(keys, values, strict=True)
        if value is not None
    }


def lease_key(key: str) -> str:
    """
    The key of C{key}'s lease: C{lease:} inserted after its namespace, so
    C{rfd:tweets:v1:username=bob} has C{rfd:lease:tweets:v1:username=bob}.
    """
    namespace, colon, rest = key.partition(":")
    return f"{namespace}:lease:{rest}" if colon else f"lease:{key}"


def _milliseconds(seconds: float) -> int:
    """C{seconds} in whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))


@implementer(IStore, IPurgeNotices)
@attrs.define(eq=False)
class RedisStore(Service):
    """
    An L{IStore} on Redis, shared by every process that uses the same server,
    database and namespace.  See the module docstring for its layout and
    connections.

    L{startService} connects; L{ready} fires once the store can be used and
    hears of changes.  L{stopService} disconnects: pending calls fail with
    L{StoreUnavailable}, and pending waiters fire as if their time had passed.

    @ivar reactor: provides C{IReactorTime} and C{IReactorTCP}.
    @ivar namespace: names the change channel, C{{namespace}:changes}, on which
        every change is published for other programs, and the purge notice
        channel, C{{namespace}:purges}.
    @ivar tracking: learn of other processes' changes by C{CLIENT TRACKING}
        (only those of keys this process read); false: by listening to the
        change channel, where every change reaches every process (the way of
        refresherd 0.1, kept for comparison in C{bench/invalidations.py}; no
        store URL asks for it).
    @ivar timeout: seconds any one call may take.
    @ivar connect_timeout: seconds one connection attempt may take.
    @ivar max_entry_bytes: the largest entry read (larger ones read as absent).
    """

    shared: ClassVar[bool] = True

    reactor: Any = attrs.field(repr=False)
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    namespace: str = "rfd"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    endpoint: IStreamClientEndpoint | None = attrs.field(default=None, repr=False)
    """How to reach the server when not by TCP to C{host:port} (TLS, a UNIX
    socket, a primary found through Sentinel); asked again at every
    (re)connection, so an endpoint may find a new address each time."""
    label: str | None = None
    """How messages name the server when C{host:port} would not say it."""
    username: str | None = None
    """The ACL user of C{AUTH username password} (with L{password}); None: C{AUTH password}."""
    warning: str | None = None
    """Logged as a warning when the store starts (a TLS certificate left unverified)."""
    tracking: bool = True

    messages: int = attrs.field(init=False, default=0)
    """How many change messages the subscriber has received (invalidations, or
    messages of the change channel without L{tracking})."""

    _log: ClassVar[Logger] = Logger()
    _factories: list[_Factory] = attrs.field(init=False, repr=False, factory=list)
    _commands: Any = attrs.field(init=False, repr=False, default=None)
    """The command connection, once it has passed its handshake; None while down."""
    _subscriber: Any = attrs.field(init=False, repr=False, default=None)
    """The subscribed connection; None while changes of other processes go unheard."""
    _redirected: tuple[Any, Any] | None = attrs.field(init=False, repr=False, default=None)
    """The command and subscriber connections between which Redis accepted the
    tracking redirection; L{listening} while they are the current ones."""
    _tracking_refused: str | None = attrs.field(init=False, repr=False, default=None)
    _refusal: str | None = attrs.field(init=False, repr=False, default=None)
    _readiness: list[Deferred[None]] = attrs.field(init=False, repr=False, factory=list)
    _starting: list[Deferred[None]] | None = attrs.field(init=False, repr=False, factory=list)
    """The calls made before the first connection attempt ended, which wait for
    it (within their deadline); None once it has: calls then fail at once
    while the store is down."""
    _waiters: ChangeWaiters = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda self: ChangeWaiters(self.reactor), takes_self=True),
    )
    _reader: EntryReader = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: EntryReader("Redis", self.max_entry_bytes), takes_self=True
        ),
    )
    _watchers: list[tuple[Callable[[str], None], Callable[[], None]]] = attrs.field(
        init=False, repr=False, factory=list
    )
    _purge_listeners: list[Callable[[bytes], None]] = attrs.field(
        init=False, repr=False, factory=list
    )
    _purges_refused: str | None = attrs.field(init=False, repr=False, default=None)
    replicas: int = attrs.field(init=False, default=0)
    """How many replicas the primary had when last asked (L{ROLE_INTERVAL})."""
    _roles: task.LoopingCall | None = attrs.field(init=False, repr=False, default=None)
    _role_refused: str | None = attrs.field(init=False, repr=False, default=None)

    @property
    def address(self) -> str:
        """C{host:port} (or L{label}), for messages."""
        if self.label is not None:
            return self.label
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def channel(self) -> str:
        """The pub/sub channel on which every change publishes its key."""
        return f"{self.namespace}:changes"

    @property
    def purge_channel(self) -> str:
        """The pub/sub channel of purge notices (L{IPurgeNotices})."""
        return f"{self.namespace}:purges"

    @property
    def listening(self) -> bool:
        """Whether both connections are up and changes of the keys read are heard."""
        if self._commands is None or self._subscriber is None:
            return False
        return not self.tracking or self._redirected == (self._commands, self._subscriber)

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        """Start connecting, and reconnecting whenever a connection is lost."""
        super().startService()
        if self.warning is not None:
            self._log.warn("{warning}", warning=self.warning)
        for protocol in (_CommandConnection, _SubscriberConnection):
            factory = _Factory(self, protocol)
            endpoint = self.endpoint or HostnameEndpoint(
                self.reactor, self.host, self.port, timeout=self.connect_timeout
            )
            factory.startConnecting(endpoint)
            self._factories.append(factory)
        self._roles = task.LoopingCall(self._ask_role)
        self._roles.clock = self.reactor
        self._roles.start(ROLE_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        """Disconnect; fires once both connections are closed."""
        super().stopService()
        factories, self._factories = self._factories, []
        if self._roles is not None and self._roles.running:
            self._roles.stop()
        self._commands = self._subscriber = self._redirected = None
        self._started()
        readiness, self._readiness = self._readiness, []
        for d in readiness:
            d.errback(StoreUnavailable(f"the Redis store of {self.address} was stopped"))
        self._waiters.notify_all()
        self._reset_watchers()
        closed = defer.gatherResults([f.disconnect() for f in factories], consumeErrors=True)
        return closed.addCallback(lambda _: None)

    def ready(self) -> Deferred[None]:
        """
        Fire once the store is L{listening} (at once if it is).  It waits as
        long as that takes; add a timeout, or cancel it.
        """
        if self.listening:
            return defer.succeed(None)
        d: Deferred[None] = Deferred(self._readiness.remove)
        self._readiness.append(d)
        return d

    # -- IStore --------------------------------------------------------------

    def get(self, key: str) -> Deferred[Entry | None]:
        """
        See L{IStore.get}; bytes that are not an entry, or fail a reader's
        checks, read as absent, with one warning.
        """
        d = self._call("get", lambda c: c.execute_command("GET", key))
        return d.addCallback(lambda data: self._reader.entry(key, data))

    def put(self, key: str, entry: Entry, ttl: float, lease: str | None = None) -> Deferred[bool]:
        """
        See L{IStore.put}: C{SET key encode(entry) PX ttl}, in a script that
        checks the lease (fenced) or deletes it (unfenced), and publishes the
        key when it writes.  A C{ttl} of zero or less deletes the entry.
        """
        ms = _milliseconds(ttl) if ttl > 0 else 0
        value = encode(entry) if ms else b""
        keys = [key, lease_key(key), *renewed(key, entry.job, entry.tags, entry.marks)]
        renew = _milliseconds(ttl + GENERATION_MARGIN)
        if lease is None:
            d = self._eval("put", _PUT, keys, [value, ms, renew, self.channel])
            d = self._acknowledged(d, "put")
        else:
            d = self._eval("put", _PUT_FENCED, keys, [value, ms, renew, self.channel, lease])
        return d.addCallback(self._put_done, key)

    def delete(self, key: str) -> Deferred[bool]:
        """See L{IStore.delete}: the entry and its lease go, and the key is published."""
        d = self._eval("delete", _DELETE, [key, lease_key(key)], [self.channel])
        return self._acknowledged(d, "delete").addCallback(self._deleted, key)

    def _acknowledged(self, d: Deferred[Any], operation: str) -> Deferred[Any]:
        """
        C{d}, a write an operator or a caller is told of (a PUT, a purge), once
        a replica has it too, when the primary has replicas: C{WAIT 1} for up
        to L{REPLICA_WAIT} seconds, else L{StoreUnavailable} (the write is on
        the primary, and would be lost should it fail before a replica has it).
        Fenced writes of fetches do not wait: a lost one costs a fetch.
        """
        if not self.replicas:
            return d
        ms = _milliseconds(REPLICA_WAIT)

        def wait(result: Any) -> Deferred[Any]:
            waited = self._call(operation, lambda c: c.execute_command("WAIT", 1, ms))
            return waited.addCallback(acknowledged, result)

        def acknowledged(count: int, result: Any) -> Any:
            if int(count) < 1:
                raise StoreUnavailable(
                    f"Redis at {self.address} has the {operation} but no replica acknowledged "
                    f"it within {REPLICA_WAIT:g} s; it is lost if the primary fails now: retry"
                )
            return result

        return d.addCallback(wait)

    def _ask_role(self) -> Deferred[None]:
        """Learn how many replicas the primary has (C{ROLE}); a failure changes nothing."""
        if self._commands is None:
            return defer.succeed(None)

        def learned(reply: Any) -> None:
            if isinstance(reply, list) and reply and reply[0] == b"master":
                self.replicas = len(reply[2]) if len(reply) > 2 else 0

        def refused(failure: Failure) -> None:
            failure.trap(StoreUnavailable)
            assert isinstance(failure.value, StoreUnavailable)
            why = failure.value.message
            if "refused role" in why and why != self._role_refused:
                self._role_refused = why
                self._log.warn(
                    "{why}; PUTs and purges will not wait for replicas (grant ROLE)", why=why
                )

        d = self._call("role", lambda c: c.execute_command("ROLE"))
        return d.addCallbacks(learned, refused)

    def acquire_lease(self, key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        """
        See L{IStore.acquire_lease}: C{SET lease token NX PX ttl}.  An error
        reply (C{OOM} when Redis is full) fails with L{StoreUnavailable}.
        """
        token = token or secrets.token_hex(16)
        command = ("SET", lease_key(key), token, "NX", "PX", _milliseconds(ttl))
        d = self._call("acquire_lease", lambda c: c.execute_command(*command))
        return d.addCallback(lambda reply: None if reply is None else token)

    def release_lease(self, key: str, token: str) -> Deferred[None]:
        """See L{IStore.release_lease}: compare-and-delete, in a script."""
        d = self._eval("release_lease", _RELEASE, [lease_key(key)], [token])
        return d.addCallback(lambda _: None)

    def wait_for_change(self, key: str, timeout: float) -> Deferred[None]:
        """
        See L{IStore.wait_for_change}.  Changes made through this object wake
        its waiters directly; those of other processes are heard only for a
        key this process read since it was last told of it: read C{key}
        before waiting (as a fetch waiting elsewhere does), or only the timeout
        fires.  While the store is not L{listening} only the timeout fires, and
        when it listens again every waiter is woken, since changes may have
        been missed.  Cancelling the result forgets the waiter and its timer.
        """
        return self._waiters.wait(key, timeout)

    def read(
        self, key: str, generation_keys: Sequence[str], cached: bool = True
    ) -> Deferred[tuple[Entry | None, dict[str, str]]]:
        """See L{IStore.read}: one C{MGET} of the entry key and the generation keys."""
        d = self._call("get", lambda c: c.execute_command("MGET", key, *generation_keys))

        def split(values: list[bytes | None]) -> tuple[Entry | None, dict[str, str]]:
            return self._reader.entry(key, values[0]), _tokens(generation_keys, values[1:])

        return d.addCallback(split)

    def get_purge_tokens(self, keys: Sequence[str]) -> Deferred[dict[str, str]]:
        """See L{IStore.get_purge_tokens}: one C{MGET}."""
        if not keys:
            return defer.succeed({})
        d = self._call("purge tokens", lambda c: c.execute_command("MGET", *keys))
        return d.addCallback(lambda values: _tokens(keys, values))

    def new_purge_token(self, key: str, ttl: float) -> Deferred[str]:
        """
        See L{IStore.new_purge_token}: C{SET key token PX ttl}, and the key
        published on the change channel (for near caches), in a script.
        """
        token = secrets.token_hex(16)
        ms = _milliseconds(ttl)
        d = self._eval("purge", _NEW_GENERATION, [key], [token, ms, self.channel])
        return self._acknowledged(d, "purge").addCallback(lambda _: token)

    # -- IPurgeNotices ------------------------------------------------------

    def publish_purge(self, notice: bytes) -> Deferred[None]:
        """See L{IPurgeNotices.publish_purge}: C{PUBLISH {namespace}:purges notice}."""
        d = self._call(
            "purge notice", lambda c: c.execute_command("PUBLISH", self.purge_channel, notice)
        )
        return d.addCallback(lambda _: None)

    def listen_purges(self, heard: Callable[[bytes], None]) -> None:
        """See L{IPurgeNotices.listen_purges}: what the subscriber hears on L{purge_channel}."""
        self._purge_listeners.append(heard)

    def watch(self, changed: Callable[[str], None], reset: Callable[[], None]) -> None:
        """
        Call C{changed} with every key read here that another client changes
        (entries, generation keys), as Redis tells; and C{reset} whenever
        either connection is lost or the store listens again, and when the
        database is flushed, since changes may have been missed meanwhile.
        """
        self._watchers.append((changed, reset))

    def _reset_watchers(self) -> None:
        for _, reset in self._watchers:
            reset()

    def ping(self) -> Deferred[None]:
        """See L{IStore.ping}: C{PING}, within the deadline."""
        return self._call("ping", lambda c: c.execute_command("PING")).addCallback(lambda _: None)

    # -- calls ---------------------------------------------------------------

    def _eval(
        self, operation: str, script: str, keys: Sequence[str], args: Sequence[object]
    ) -> Deferred[Any]:
        # txredisapi's eval sends EVALSHA once it has sent the script with EVAL
        # on this connection, and EVAL again when Redis answers NOSCRIPT.
        return self._call(operation, lambda c: c.eval(script, keys, args))

    def _call(self, operation: str, command: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        """
        Run C{command} on the command connection with the deadline, turning
        every failure to reach Redis, and every error reply, into
        L{StoreUnavailable}.
        """
        connection = self._commands
        if connection is None and self._starting is not None and self.running:
            return self._after_start(operation, command)
        if connection is None:
            why = f": {self._refusal}" if self._refusal else ""
            return defer.fail(
                StoreUnavailable(one_line(f"Redis at {self.address} is not connected{why}"))
            )
        d = defer.maybeDeferred(command, connection)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._unavailable, operation, connection)

    def _after_start(
        self, operation: str, command: Callable[[Any], Deferred[Any]]
    ) -> Deferred[Any]:
        """
        A call made while the store is still connecting for the first time (a
        request that reached a process just started) waits for that attempt
        rather than failing as if Redis were down, within its deadline.
        """
        assert self._starting is not None
        waiting: Deferred[None] = Deferred(self._starting.remove)
        self._starting.append(waiting)
        waiting.addTimeout(self.timeout, self.reactor)

        def late(failure: Failure) -> Failure:
            failure.trap(defer.TimeoutError)
            return Failure(
                StoreUnavailable(
                    f"Redis at {self.address} was not connected within {self.timeout:g} s"
                )
            )

        waiting.addCallbacks(lambda _: self._call(operation, command), late)
        return waiting

    def _started(self) -> None:
        """The first connection attempt has ended: the calls waiting for it go on."""
        waiting, self._starting = self._starting, None
        for d in waiting or ():
            d.callback(None)

    def _unavailable(self, failure: Failure, operation: str, connection: Any) -> Failure:
        where = f"Redis at {self.address}"
        if failure.check(defer.TimeoutError):
            # No answer in time: treat the connection as dead, so that a new one
            # replaces it rather than queueing more commands behind this one.
            connection.transport.abortConnection()
            message = f"{where} did not answer {operation} within {self.timeout:g} s"
        elif failure.check(txredisapi.ResponseError):
            if str(failure.value).startswith("READONLY"):
                # A primary demoted to a replica (a failover): connect again,
                # which finds the new primary where the endpoint can.
                connection.transport.loseConnection()
            message = f"{where} refused {operation}: {failure.value}"
        elif failure.check(txredisapi.ConnectionError):
            message = f"{where} failed {operation}: {failure.value}"
        else:
            return failure
        return Failure(StoreUnavailable(one_line(message)))

    def _put_done(self, reply: int, key: str) -> bool:
        """Whether written: 0 is a fenced put whose lease was gone, which changed nothing."""
        if reply != 1:
            return False
        self._waiters.notify(key)
        return True

    def _deleted(self, reply: int, key: str) -> bool:
        """Whether an entry was there."""
        self._waiters.notify(key)
        return reply == 1

    # -- connections and changes ---------------------------------------------

    def _connected(self, connection: Any, subscriber: bool) -> None:
        """A connection has passed its handshake."""
        if not self.running:
            connection.transport.loseConnection()
            return
        self._refusal = None
        if subscriber:
            self._subscriber = connection
        else:
            self._commands = connection
        if self.tracking:
            self._redirect()  # Sent before any other command of a new connection.
        else:
            self._listen()
        if not subscriber:
            self._ask_role()
            self._started()

    def _redirect(self) -> None:
        """
        Turn tracking on, redirected to the current subscriber, and listen once
        Redis accepts it (unless a connection changed meanwhile: that change
        redirects again).
        """
        commands, subscriber = self._commands, self._subscriber
        if commands is None or subscriber is None:
            return
        sent = commands.execute_command(
            "CLIENT", "TRACKING", "on", "REDIRECT", subscriber.client_id, "NOLOOP"
        )

        def accepted(_: object) -> None:
            if (self._commands, self._subscriber) == (commands, subscriber):
                self._redirected = (commands, subscriber)
                self._tracking_refused = None
                self._listen()

        def refused(failure: Failure) -> None:
            current = (self._commands, self._subscriber) == (commands, subscriber)
            if not current or not failure.check(txredisapi.ResponseError):
                return  # A connection was lost (or timed out): its successor redirects again.
            why = one_line(f"{failure.value}")
            if why != self._tracking_refused:
                self._tracking_refused = why
                self._log.error(
                    "Redis at {address} refused CLIENT TRACKING: {why}; changes made by "
                    "other processes are seen only by polling and after near_ttl",
                    address=self.address,
                    why=why,
                )

        sent.addCallbacks(accepted, refused)

    def _listen(self) -> None:
        """
        The store now hears of changes: wake every waiter and drop the near
        caches (changes may have been missed before), and fire L{ready}.
        """
        if not self.listening:
            return
        self._log.info(
            "Hearing of changes on {channel} of Redis at {address}",
            channel=INVALIDATIONS if self.tracking else self.channel,
            address=self.address,
        )
        self._waiters.notify_all()
        self._reset_watchers()
        readiness, self._readiness = self._readiness, []
        for d in readiness:
            d.callback(None)

    def _refused(self, why: str, tls: bool = False, cluster: bool = False) -> None:
        """
        Redis refused a handshake (a wrong password, a database that does not
        exist), or C{tls}: the TLS of a connection failed (a server's
        certificate that did not verify), or C{cluster}: the server is a Redis
        Cluster node; logged once until a connection passes or the reason changes.
        """
        why = one_line(why)
        if why != self._refusal:
            if cluster:
                self._log.error(
                    "Redis at {address} is a Redis Cluster node; refresherd needs a single "
                    "primary (see docs/scaling.md)",
                    address=self.address,
                )
            else:
                self._log.error(
                    "Redis at {address} {what}: {why}",
                    address=self.address,
                    what="could not be used over TLS" if tls else "refused the connection",
                    why=why,
                )
        self._refusal = why

    def _lost(self, connection: Any) -> None:
        """
        A connection is gone, and with it what it heard (the subscriber) or
        what Redis tracked for it (the command connection): drop the near
        caches now, and wake the waiters once the store listens again.
        """
        if connection is self._commands:
            self._commands = None
            self._reset_watchers()
            self._log.warn("Lost the connection to Redis at {address}", address=self.address)
        elif connection is self._subscriber:
            self._subscriber = None
            self._reset_watchers()
            self._log.warn(
                "Lost the subscriber connection to Redis at {address}; "
                "waiters poll until it is back",
                address=self.address,
            )

    def _purges_unheard(self, why: str | None) -> None:
        """
        Redis refused the subscription to L{purge_channel} for C{why} (an ACL
        without that channel), or accepted it (C{None}); logged once until the
        reason changes.  The store works on, but purge notices go unheard.
        """
        if why is not None and why != self._purges_refused:
            self._log.error(
                "Redis at {address} refused SUBSCRIBE {channel}: {why}; soft purges made by "
                "other processes do not regenerate this process's hot keys",
                address=self.address,
                channel=self.purge_channel,
                why=one_line(why),
            )
        self._purges_refused = why

    def _heard_purge(self, notice: object) -> None:
        """A message on L{purge_channel}: given to every listener, which judges it."""
        if not isinstance(notice, bytes):
            return
        for heard in self._purge_listeners:
            try:
                heard(notice)
            except Exception:
                self._log.failure("A purge notice's listener failed")

    def _heard(self, message: object) -> None:
        """
        A message on the subscriber: the keys changed (a list of them, from
        tracking; one, on the change channel), or None when the database was
        flushed (everything may have changed).  Anything else is ignored: any
        client may publish on these channels.
        """
        self.messages += 1
        if message is None:
            self._waiters.notify_all()
            self._reset_watchers()
            return
        for item in message if isinstance(message, list) else [message]:
            if isinstance(item, bytes):
                key = item.decode("utf-8", "replace")
                self._waiters.notify(key)
                for changed, _ in self._watchers:
                    changed(key)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    """
    txredisapi's reconnecting factory with one connection, bytes in and out,
    quick reconnection, and no AUTH or SELECT of its own (see L{_Connection}).
    """

    initialDelay = RECONNECT_INITIAL_DELAY
    maxDelay = RECONNECT_MAX_DELAY

    def __init__(self, store: RedisStore, protocol: type[_Connection]) -> None:
        super().__init__(
            f"{store.host}:{store.port}",
            None,
            1,
            charset=None,
            convertNumbers=False,
            replyTimeout=store.timeout,
        )
        self.store = store
        self.protocol = protocol

    def retryDelay(self, attempt: int) -> float:
        """
        The delay before the next connection; the longest while the server
        refuses the handshake (a password, a database, a Cluster node), since
        txredisapi counts a connection it refused as a success and would
        otherwise start again from the shortest.
        """
        self.store._started()  # an attempt failed: calls fail at once from now on
        if self.store._refusal is not None:
            return RECONNECT_MAX_DELAY
        delay: float = super().retryDelay(attempt)
        return delay

    def addConnection(self, conn: Any) -> None:
        """
        Keep nothing: the store takes its connections from their handshake, and
        txredisapi's pool would keep every connection ever made in its queue.
        """


class _Connection(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    A txredisapi connection (hiredis) that the store uses only once its own
    handshake has passed: AUTH when the store has a password, C{INFO cluster}
    (a Redis Cluster node is refused), then L{set_up}.
    A refused handshake closes the connection, to be tried again after the
    reconnection delay; txredisapi's own AUTH would stop reconnecting for good.
    """

    factory: _Factory
    subscriber: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._usable: list[Deferred[Any]] = []
        self._deadline: Any = None

    def whenConnected(self) -> Deferred[Any]:
        """
        Fire once the store's handshake has passed, not when the connection is
        made: txredisapi then keeps backing off (up to L{RECONNECT_MAX_DELAY})
        while connections are refused or fail their TLS, rather than retrying
        at the first delay for ever.
        """
        d: Deferred[Any] = Deferred()
        self._usable.append(d)
        return d

    def connectionMade(self) -> None:
        super().connectionMade()
        store = self.factory.store
        self._deadline = store.reactor.callLater(store.timeout, self._unanswered)
        Deferred.fromCoroutine(self._handshake())

    def _unanswered(self) -> None:
        """
        The handshake (TLS, AUTH, SELECT or SUBSCRIBE) got no answer in time:
        a hung server, or one that does not speak TLS on that port.  Abort, so
        that a new connection is tried (closing politely would wait for ever
        on a TLS handshake that never ends).
        """
        store = self.factory.store
        store._refusal = f"a new connection got no answer within {store.timeout:g} s"
        self.transport.abortConnection()

    async def _handshake(self) -> None:
        store = self.factory.store
        try:
            if store.password is not None:
                user = () if store.username is None else (store.username,)
                await self.execute_command("AUTH", *user, store.password)
            if await self._cluster_node(store):
                store._refused(CLUSTER_NODE, cluster=True)
                self.transport.loseConnection()
                return
            await self.set_up(store)
        except txredisapi.ResponseError as e:
            store._refused(str(e))
            self.transport.loseConnection()
        except txredisapi.ConnectionError:
            self.transport.loseConnection()
        else:
            if self._deadline.active():
                self._deadline.cancel()
            store._connected(self, self.subscriber)
            usable, self._usable = self._usable, []
            for d in usable:
                d.callback(self)

    async def _cluster_node(self, store: RedisStore) -> bool:
        """
        Whether the server is a Redis Cluster node (C{INFO cluster}), where
        keys of other slots answer C{MOVED}: refresherd needs one primary.  A
        server that refuses C{INFO} (an ACL user without it, a proxy) is let
        through, since most servers that do so are not Cluster nodes.
        """
        try:
            info = await self.execute_command("INFO", "cluster")
        except txredisapi.ResponseError as e:
            store._log.debug(
                "Redis at {address} refused INFO ({why}); not checked for Redis Cluster",
                address=store.address,
                why=one_line(str(e)),
            )
            return False
        return cluster_enabled(info)

    async def set_up(self, store: RedisStore) -> None:
        """What the connection does after AUTH."""

    def connectionLost(self, reason: Failure) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)
        store = self.factory.store
        if self is not store._commands and self is not store._subscriber:
            tls = tls_failure(reason)
            if tls is not None:
                store._refused(tls, tls=True)
            elif store._refusal is None and store.running:
                store._refusal = CLOSED_UNANSWERED
        store._lost(self)


class _CommandConnection(_Connection):
    async def set_up(self, store: RedisStore) -> None:
        # Always a round trip, so that a connection is used only once Redis
        # has answered on it (a frozen server accepts connections it never serves).
        await self.execute_command("SELECT", store.db)


class _SubscriberConnection(_Connection, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    subscriber = True
    client_id: int = 0
    """Redis's id of this connection, which tracking redirects to."""

    async def set_up(self, store: RedisStore) -> None:
        self.client_id = int(await self.execute_command("CLIENT", "ID"))
        await self.subscribe(INVALIDATIONS if store.tracking else store.channel)
        # A subscription of its own, so that a refusal (an ACL without the
        # channel) names it and costs the notices only.
        try:
            await self.subscribe(store.purge_channel)
        except txredisapi.ResponseError as e:
            store._purges_unheard(str(e))
        else:
            store._purges_unheard(None)

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        store = self.factory.store
        if channel == store.purge_channel.encode():
            store._heard_purge(message)
        else:
            store._heard(message)
