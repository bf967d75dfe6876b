"""
Purge notices (docs/README.md, "Background refreshes"; docs/security.md): what
a soft purge publishes, and what a refresher does with what it hears, on a
store with a channel in this process.  On Redis: tests/integration/test_notices.py.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer, provider

from refresherd.core import notices
from refresherd.core.notices import MAX_NOTICE_BYTES, MAX_NOTICE_NAMES, Notice
from refresherd.core.refresher import NOTICE_WARNING_INTERVAL
from refresherd.errors import StoreUnavailable
from refresherd.interfaces import IPurgeNotices
from refresherd.stores.memory import MemoryStore
from tests.unit.test_purge import BOB, World

Purged = tuple[list[str], list[str], list[str], bool]


@implementer(IPurgeNotices)
@attrs.define(eq=False)
class NoticeStore(MemoryStore):
    """A memory store with a purge notice channel that keeps what is published."""

    published: list[bytes] = attrs.field(factory=list, init=False)
    listeners: list[Any] = attrs.field(factory=list, init=False)
    down: bool = attrs.field(default=False, init=False)

    def publish_purge(self, notice: bytes) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable("Redis at 127.0.0.1:1 did not answer within 2 s"))
        self.published.append(notice)
        return succeed(None)

    def listen_purges(self, heard: Any) -> None:
        self.listeners.append(heard)

    def hear(self, notice: bytes) -> None:
        for heard in self.listeners:
            heard(notice)


@pytest.fixture
def warnings() -> Any:
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def world() -> tuple[World, NoticeStore, list[Purged]]:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = NoticeStore(clock)
    w = World(store)
    purged: list[Purged] = []
    w.refresher.after_purge = lambda *args: purged.append(args)
    return w, store, purged


def notice(**fields: Any) -> bytes:
    base: dict[str, Any] = {"from": "elsewhere", "keys": [], "jobs": [], "tags": []}
    return json.dumps({**base, **fields}).encode()


# -- the format ----------------------------------------------------------------


def test_a_notice_is_compact_json_of_from_keys_jobs_and_tags() -> None:
    [data] = notices.encode("me", ["rfd:user:v1:id=1"], ["team"], ["user:bob"])
    assert data == b'{"from":"me","keys":["rfd:user:v1:id=1"],"jobs":["team"],"tags":["user:bob"]}'
    assert notices.decode(data) == Notice("me", ["rfd:user:v1:id=1"], ["team"], ["user:bob"])


def test_a_purge_too_large_for_one_notice_is_told_in_several() -> None:
    tags = [f"{n:04}" + "\x01" * 1020 for n in range(MAX_NOTICE_NAMES)]  # escaped: 6 bytes each
    data = notices.encode("me", [], [], tags)
    assert len(data) > 1
    assert all(len(d) <= MAX_NOTICE_BYTES for d in data)
    assert [t for d in data for t in notices.decode(d).tags] == tags


@pytest.mark.parametrize(
    "data, why",
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"from":"x","keys":[NaN],"jobs":[],"tags":[]}', "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (MAX_NOTICE_BYTES + 1), "larger than"),
        (b'["from","keys","jobs","tags"]', "not an object"),
        (b'{"from":"x","keys":[],"jobs":[]}', "not an object"),
        (b'{"from":"x","keys":[],"jobs":[],"tags":[],"more":1}', "not an object"),
        (b'{"from":1,"keys":[],"jobs":[],"tags":[]}', "from is not a string"),
        (b'{"from":"x","keys":"k","jobs":[],"tags":[]}', "not lists of strings"),
        (b'{"from":"x","keys":[],"jobs":[1],"tags":[]}', "not lists of strings"),
        (b'{"from":"x","keys":[],"jobs":[],"tags":[["t"]]}', "not lists of strings"),
        (notice(tags=["t"] * (MAX_NOTICE_NAMES + 1)), "more than 1000 names"),
    ],
)
def test_what_is_not_a_notice_is_refused_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why) as raised:
        notices.decode(data)
    assert "\n" not in str(raised.value)


# -- publishing ----------------------------------------------------------------


def test_a_soft_purge_publishes_what_it_purged_once_done() -> None:
    w, store, purged = world()
    key = w.refresher.target("user", BOB).key
    assert w.purge(keys=[key], jobs=["team"], tags=["user:bob"], soft=True) == 3
    [data] = store.published
    heard = notices.decode(data)
    assert (heard.keys, heard.jobs, heard.tags) == ([key], ["team"], ["user:bob"])
    assert len(heard.origin) == 32
    assert purged == [([key], ["team"], ["user:bob"], True)]  # here, at once


def test_a_hard_purge_publishes_nothing() -> None:
    w, store, _ = world()
    w.purge(keys=[w.refresher.target("user", BOB).key], jobs=["team"], tags=["t"])
    assert store.published == []


def test_a_purge_that_fails_publishes_nothing() -> None:
    w, store, _ = world()
    with pytest.raises(Exception, match="no job"):
        w.purge(jobs=["nope"], soft=True)
    assert store.published == []


def test_a_notice_that_cannot_be_published_is_logged_and_the_purge_answered(
    warnings: list[dict[str, Any]],
) -> None:
    w, store, purged = world()
    store.down = True
    assert w.purge(tags=["user:bob"], soft=True) == 1
    [warning] = [formatEvent(e) for e in warnings]
    assert warning == (
        "Soft purge done, but other processes were not told of it: "
        "Redis at 127.0.0.1:1 did not answer within 2 s"
    )
    assert purged == [([], [], ["user:bob"], True)]


# -- hearing -------------------------------------------------------------------


def test_a_notice_of_another_process_regenerates_what_it_names() -> None:
    w, store, purged = world()
    key = w.refresher.target("user", BOB).key
    store.hear(notice(keys=[key], jobs=["user"], tags=["team:red"]))
    assert purged == [([key], ["user"], ["team:red"], True)]


def test_a_refresher_ignores_its_own_notices() -> None:
    w, store, purged = world()
    w.purge(tags=["user:bob"], soft=True)
    purged.clear()
    store.hear(store.published[0])
    assert purged == []


def test_two_refreshers_have_different_origins() -> None:
    (w1, one, _), (w2, two, _) = world(), world()
    w1.purge(tags=["t"], soft=True)
    w2.purge(tags=["t"], soft=True)
    assert notices.decode(one.published[0]).origin != notices.decode(two.published[0]).origin


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        notice(jobs=["nope"]),
        notice(keys=["other:user:v1:id=1"]),
        notice(keys=["rfd:lease:user:v1:id=1"]),
        notice(keys=["not a key"]),
        notice(tags=[1]),
    ],
)
def test_a_notice_that_names_nothing_of_ours_is_ignored_with_a_warning(
    data: bytes, warnings: list[dict[str, Any]]
) -> None:
    w, store, purged = world()
    store.hear(data)
    assert purged == []
    [warning] = [formatEvent(e) for e in warnings]
    assert warning.startswith("Ignored 1 purge notice(s) heard on the store (the last: ")
    assert "\n" not in warning


def test_ignored_notices_are_warned_of_at_most_once_a_minute(
    warnings: list[dict[str, Any]],
) -> None:
    w, store, purged = world()
    for _ in range(5):
        store.hear(b"junk")
    w.clock.advance(NOTICE_WARNING_INTERVAL - 1)
    store.hear(b"junk")
    assert len(warnings) == 1
    w.clock.advance(1)
    store.hear(notice(jobs=["nope"]))
    assert [formatEvent(e) for e in warnings][1] == (
        "Ignored 6 purge notice(s) heard on the store (the last: no job named 'nope')"
    )
    store.hear(notice(jobs=["team"]))  # a good one is still heard
    assert purged == [([], ["team"], [], True)]


def test_a_store_without_a_channel_is_not_told() -> None:
    w = World()  # a plain memory store
    assert not IPurgeNotices.providedBy(w.store)
    assert w.purge(tags=["user:bob"], soft=True) == 1
