"""
Test helpers shipped with refresherd: fakes for the fetcher and the store's
failures, usable by anyone who tests code built on refresherd.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import alsoProvides, implementer

from refresherd.entry import NO_VALIDATORS, Fetched
from refresherd.errors import FetchError, StoreUnavailable
from refresherd.interfaces import IFetcher, IReadsAtHand, IStore


@attrs.define
class Call:
    args: dict[str, str]
    result: Deferred[Fetched]
    cancelled: bool = False
    validators: tuple[str, str] = NO_VALIDATORS
    """The stored value's C{ETag} and C{Last-Modified} the fetch was asked to revalidate."""


@implementer(IFetcher)
@attrs.define
class FakeFetcher:
    """
    A fetcher whose attempts the test completes by hand: each call to
    L{fetch} is recorded in L{calls} with the Deferred it returned.
    """

    calls: list[Call] = attrs.field(factory=list)

    def fetch(
        self, args: Mapping[str, str], validators: tuple[str, str] = NO_VALIDATORS
    ) -> Deferred[Fetched]:
        def cancel(d: Deferred[Fetched]) -> None:
            call.cancelled = True

        call = Call(dict(args), Deferred(cancel), validators=validators)
        self.calls.append(call)
        return call.result

    def answer(self, fetched: Fetched, index: int = -1) -> None:
        """Complete a call with C{fetched} (lifetimes, tags, validators, a 304...)."""
        self.calls[index].result.callback(fetched)

    def succeed(
        self, index: int = -1, body: bytes = b'{"n": 1}', content_type: str = "application/json"
    ) -> None:
        self.calls[index].result.callback(Fetched(body, content_type))

    def fail(self, index: int = -1, reason: str = "origin answered 500") -> None:
        self.calls[index].result.errback(FetchError(reason))

    @property
    def pending(self) -> list[Call]:
        return [c for c in self.calls if not c.result.called]


@implementer(IStore)
@attrs.define(slots=False)  # so that it can also provide IReadsAtHand
class UnreachableStore:
    """
    Wraps a store and, while C{down} is true, fails every call with
    L{StoreUnavailable}, as a store whose server is gone does.  It provides
    L{IStore} through the store it wraps, and L{IReadsAtHand} when that does.
    """

    store: Any
    down: bool = True
    shared: bool = True

    def __attrs_post_init__(self) -> None:
        if IReadsAtHand.providedBy(self.store):
            alsoProvides(self, IReadsAtHand)

    @property
    def lags(self) -> bool:
        return bool(getattr(self.store, "lags", False))

    def read_at_hand(self, key: str, generation_keys: Any) -> Any:
        """Nothing at hand while down (a read would fail), else what the store has."""
        return None if self.down else self.store.read_at_hand(key, generation_keys)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            if self.down:
                return defer.fail(StoreUnavailable("the store is unreachable"))
            return defer.maybeDeferred(method, *args, **kwargs)

        return call
