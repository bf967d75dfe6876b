"""
The two seams of refresherd: where values are kept (L{IStore}) and how they
are fetched (L{IFetcher}).  The refresher talks to these only, so a new store
or a new kind of fetch plugs in without touching the refresh logic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from refresherd.entry import Entry, Fetched

Tokens = dict[str, str]
"""The purge tokens of generation keys: each key that holds one, to its token."""


class IStore(Interface):
    """
    Where entries live, shared by every refresherd process that uses it.

    Every method returns a L{Deferred}.  A store that cannot be reached fails
    them with L{refresherd.errors.StoreUnavailable}, within a bounded time.
    """

    shared = Attribute(
        "True when other processes may use the same store, so that a waiter "
        "must watch the store for a fetch running elsewhere."
    )

    def get(key: str) -> Deferred[Entry | None]:
        """
        The L{refresherd.entry.Entry} of C{key}, or L{None} if there is none
        (never written, expired, evicted, purged, or unreadable).
        """

    def put(key: str, entry: Entry, ttl: float, lease: str | None = None) -> Deferred[bool]:
        """
        Keep C{entry} under C{key} for C{ttl} seconds; fire with C{True} if
        written.

        With C{lease}, the write is fenced: it happens only while that lease on
        C{key} is still held, and fires C{False} otherwise.  Without, the write
        is unconditional and breaks any lease on C{key}, so that a fetch which
        started before it can never overwrite it.

        An entry that carries purge marks keeps the generation keys of its job
        and tags that exist (L{refresherd.core.marks.renewed}) for C{ttl} plus
        L{refresherd.core.marks.GENERATION_MARGIN} at least, so that none
        expires while the entry lives (a store that evicts them anyway, such
        as memcached, may leave them alone).
        """

    def delete(key: str) -> Deferred[bool]:
        """
        Forget C{key} and break any lease on it; fire with C{True} if an entry
        was there.
        """

    def acquire_lease(key: str, ttl: float, token: str | None = None) -> Deferred[str | None]:
        """
        Mark a fetch of C{key} as running for at most C{ttl} seconds.  Fire
        with a token that names this holder (C{token} when given, a new random
        one otherwise), or L{None} when another holder has it.  A caller that
        names the token can release a lease whose answer it never got (the
        store may have taken it before the connection was lost).
        """

    def release_lease(key: str, token: str) -> Deferred[None]:
        """Release the lease on C{key} if C{token} still holds it."""

    def wait_for_change(key: str, timeout: float) -> Deferred[None]:
        """
        Fire (with L{None}) when C{key} is next written or deleted, or when
        C{timeout} seconds have passed, whichever comes first.  Waiters for a
        fetch that runs in another process use it.  A change made elsewhere
        may be heard only for a key read since its last change (Redis tells
        a process of changes to the keys it read): read C{key}, then wait.
        """

    def read(
        key: str, generation_keys: Sequence[str], cached: bool = True
    ) -> Deferred[tuple[Entry | None, Tokens]]:
        """
        What a lookup needs, in one round trip where the store allows: fire
        with C{(entry, tokens)}, the result of L{get} of C{key} and of
        L{get_purge_tokens} of C{generation_keys}.  With C{cached} false, a store
        that may answer from what it holds in this process (L{IReadsAtHand}
        with C{lags}) reads the shared store itself.
        """

    def get_purge_tokens(keys: Sequence[str]) -> Deferred[dict[str, str]]:
        """
        The current tokens of the generation keys C{keys}
        (L{refresherd.core.marks}): a mapping of each key that holds one to
        its token; a key never purged is left out.
        """

    def new_purge_token(key: str, ttl: float) -> Deferred[str]:
        """
        Write a new random token under the generation key C{key}, so that
        every entry marked with the old one reads as purged; it expires after
        C{ttl} seconds (which must outlive every entry written before), unless
        a L{put} renews it.  Fire with the token.
        """

    def ping() -> Deferred[None]:
        """Fire when the store answers, fail with StoreUnavailable when not."""


class IReadsAtHand(Interface):
    """
    A store that may hold what a read needs in this process (the memory
    store, a near cache) and answer it with no I/O: how a hit skips every
    Deferred.  Optional: a store without it is always read with L{IStore.read}.
    """

    lags = Attribute(
        "True when what it holds may be behind the shared store (a near cache: up to "
        "its near_ttl): a read to act on, such as one that would start a refresh, "
        "is made again with read(..., cached=False)."
    )

    def read_at_hand(
        key: str, generation_keys: Sequence[str]
    ) -> tuple[Entry | None, Tokens] | None:
        """
        The C{(entry, tokens)} that L{IStore.read} would fire with, returned at
        once when the store has them here; else L{None}, and the caller calls
        L{IStore.read}.
        """


class IHoldsEntries(Interface):
    """
    A store whose entries are all in this process (the memory store), so
    that it can say at once how many it holds and what they count against
    its bound (C{GET /v1/status}).  Optional.
    """

    used_bytes = Attribute("What the entries kept now count against the store's bound, in bytes.")

    def entry_count() -> int:
        """The entries kept now (those past their time but not dropped yet included)."""


class IPurgeNotices(Interface):
    """
    A store on which the processes sharing it tell one another of soft
    purges (L{refresherd.core.notices}), so that each regenerates the hot keys
    the purge covers.  Optional: on a store without it (memcached), only the
    process that purged does.
    """

    def publish_purge(notice: bytes) -> Deferred[None]:
        """
        Tell every process listening (this one too) of C{notice}; fail with
        L{refresherd.errors.StoreUnavailable} when the store cannot be reached
        in time.  Delivery is at most once.
        """

    def listen_purges(heard: Callable[[bytes], None]) -> None:
        """
        Call C{heard} with every notice published from now on, by any client
        of the store: what it hears is untrusted.
        """


class IFetcher(Interface):
    """
    One job's way of fetching a value.  It makes one attempt; the refresher
    owns timeouts, retries, backoff and concurrency.
    """

    def fetch(args: Mapping[str, str]) -> Deferred[Fetched]:
        """
        Fetch the value for C{args} (a mapping of the job's argument names to
        strings).  Fire with a L{refresherd.entry.Fetched}, or fail with
        L{refresherd.errors.FetchError} whose message says why in one line.

        The fetcher of an C{http} job is also called with a second argument,
        the stored value's validators (its origin's C{ETag} and
        C{Last-Modified}), when it has some: it then asks the origin whether
        the value changed, and a 304 fires a C{Fetched} with C{not_modified}.

        Cancelling the Deferred abandons the attempt: a network fetch closes
        its connection; work in a thread runs on but its result is dropped.
        """
