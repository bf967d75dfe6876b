"""
What a fetch may say about its own entry (docs/http-caching.md): windows
(L{Lifetimes}) with the floor of C{min_refresh}, not storing (C{no-store}),
tags of its own that purges by tag reach (also during the fetch), and
revalidation with a 304 that renews the stored value; all on task.Clock.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from zope.interface import implementer

from refresherd.config import JobConfig
from refresherd.core import refresher as refresher_module
from refresherd.core.jobs import Job
from refresherd.core.refresher import Answer, Refresher
from refresherd.entry import Entry, Fetched, Lifetimes
from refresherd.interfaces import IStore
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher
from tests.deferreds import as_deferred, result

KEY = "rfd:j:v1:id=1"


def make(**settings: Any) -> tuple[Refresher, FakeFetcher, task.Clock, MemoryStore]:
    """A refresher of the http job C{j} (a fake fetcher) on a memory store, at 1e6 s."""
    clock = task.Clock()
    clock.advance(1_000_000)
    store = MemoryStore(clock)
    fetcher = FakeFetcher()
    settings.setdefault("fresh", 60.0)
    config = JobConfig(name="j", fetch="http", url="http://origin/{id}", args=("id",), **settings)
    refresher = Refresher(
        store, {"j": Job(config, fetcher)}, clock, "rfd", metrics_for(["j"]), random=lambda: 0.99
    )
    return refresher, fetcher, clock, store


def lookup(refresher: Refresher) -> Any:
    return ask_id(refresher, "1")


def ask_id(refresher: Refresher, id: str) -> Any:
    return as_deferred(lambda: refresher.lookup(refresher.target("j", {"id": id})))


def stored(store: MemoryStore) -> Entry | None:
    return result(store.get(KEY))


def purge(refresher: Refresher, tags: list[str], soft: bool = False) -> None:
    result(Deferred.fromCoroutine(refresher.purge([], [], tags, soft)))


def fetched(body: bytes = b"1", **fields: Any) -> Fetched:
    return Fetched(body, "text/plain", **fields)


def test_an_answers_lifetimes_set_its_windows_and_why() -> None:
    refresher, fetcher, clock, store = make(freshness="origin", stale=100.0)
    d = lookup(refresher)
    why = {"fresh": "Cache-Control max-age=5"}
    fetcher.answer(fetched(lifetimes=Lifetimes(5.0, 20.0, 0.0, why)))
    assert result(d).status == "miss"
    entry = stored(store)
    assert entry is not None
    now = clock.seconds()
    assert (entry.fresh_until, entry.stale_until, entry.error_until) == (now + 5, now + 25, now + 5)
    assert entry.lifetimes == why
    assert entry.retry_at == 0.0  # fresh is longer than min_refresh: no floor needed
    clock.advance(6)
    assert result(lookup(refresher)).status == "stale"
    assert len(fetcher.calls) == 2


def test_refreshes_of_a_value_stale_at_once_wait_min_refresh() -> None:
    refresher, fetcher, clock, store = make(freshness="origin", stale=100.0, min_refresh=2.0)
    lookup(refresher)
    zero = Lifetimes(0.0, 100.0, 0.0)
    fetcher.answer(fetched(lifetimes=zero))
    for _ in range(10):
        assert result(lookup(refresher)).status == "stale"
    assert len(fetcher.calls) == 1  # not before min_refresh
    clock.advance(2)
    assert result(lookup(refresher)).status == "stale"
    assert len(fetcher.calls) == 2
    fetcher.answer(fetched(lifetimes=zero))
    clock.advance(1)
    result(lookup(refresher))
    assert len(fetcher.calls) == 2


def test_with_no_stale_window_a_value_stale_at_once_is_served_until_min_refresh() -> None:
    refresher, fetcher, clock, store = make(freshness="origin", min_refresh=2.0)
    lookup(refresher)
    fetcher.answer(fetched(lifetimes=Lifetimes(0.0, 0.0, 0.0)))
    for _ in range(10):
        assert result(lookup(refresher)).status == "stale"
        clock.advance(0.19)
    assert len(fetcher.calls) == 1
    clock.advance(0.2)
    waiting = lookup(refresher)
    assert not waiting.called  # past min_refresh: absent, fetched (once) for the callers
    assert len(fetcher.calls) == 2


def test_no_store_answers_the_callers_and_stores_nothing() -> None:
    refresher, fetcher, _, store = make(freshness="origin")
    waiting = [lookup(refresher) for _ in range(3)]
    fetcher.answer(fetched(b"secret", no_store="Cache-Control private"))
    answers: list[Answer] = [result(d) for d in waiting]
    assert {(a.status, a.stored, a.entry.body if a.entry else None) for a in answers} == {
        ("miss", False, b"secret")
    }
    assert stored(store) is None
    token = result(store.acquire_lease(KEY, 10))
    assert token is not None  # the lease was released
    result(store.release_lease(KEY, token))
    lookup(refresher)
    assert len(fetcher.calls) == 2


def test_no_store_on_a_refresh_keeps_the_old_value_and_holds_off() -> None:
    refresher, fetcher, clock, store = make(freshness="origin", stale=100.0, min_refresh=3.0)
    lookup(refresher)
    fetcher.answer(fetched(b"old"))
    clock.advance(61)
    assert result(lookup(refresher)).status == "stale"
    fetcher.answer(fetched(b"new", no_store="Cache-Control no-store"))
    entry = stored(store)
    assert entry is not None and entry.body == b"old"
    assert entry.retry_at == clock.seconds() + 3
    assert result(lookup(refresher)).entry.body == b"old"
    assert len(fetcher.calls) == 2
    clock.advance(3)
    result(lookup(refresher))
    assert len(fetcher.calls) == 3


def test_a_purge_of_an_origin_tag_reaches_the_entry() -> None:
    refresher, fetcher, _, store = make(freshness="origin", tags=["mine"])
    lookup(refresher)
    fetcher.answer(fetched(tags=("product:7", "mine")))
    entry = stored(store)
    assert entry is not None and entry.tags == ("mine", "product:7")
    assert result(lookup(refresher)).status == "hit"
    purge(refresher, ["other"])
    assert result(lookup(refresher)).status == "hit"
    purge(refresher, ["product:7"], soft=True)
    assert result(lookup(refresher)).status == "stale"
    fetcher.answer(fetched(b"2", tags=("product:7",)))
    assert result(lookup(refresher)).status == "hit"
    purge(refresher, ["product:7"])
    d = lookup(refresher)
    assert not d.called  # absent: a miss waits for the fetch
    assert len(fetcher.calls) == 3


def test_a_hard_purge_of_any_tag_during_the_fetch_leaves_its_tagged_answer_unstored() -> None:
    refresher, fetcher, _, store = make(freshness="origin")
    d = lookup(refresher)
    purge(refresher, ["product:7"])  # the tag is not known until the answer comes
    fetcher.answer(fetched(tags=("product:7",)))
    answer = result(d)
    assert (answer.status, answer.stored) == ("miss", False)
    assert stored(store) is None


def test_a_soft_purge_by_tag_during_the_fetch_stores_its_tagged_answer_stale() -> None:
    refresher, fetcher, clock, store = make(freshness="origin", stale=30.0)
    d = lookup(refresher)
    purge(refresher, ["anything"], soft=True)
    fetcher.answer(fetched(tags=("product:7",)))
    assert result(d).status == "miss"
    entry = stored(store)
    assert entry is not None and entry.fresh_until == clock.seconds()
    assert result(lookup(refresher)).status == "stale"
    assert len(fetcher.calls) == 2


def test_a_purge_of_the_job_during_the_fetch_is_kept_with_origin_tags() -> None:
    refresher, fetcher, _, store = make(freshness="origin")
    d = lookup(refresher)
    result(Deferred.fromCoroutine(refresher.purge([], ["j"], [], False)))
    fetcher.answer(fetched(tags=("product:7",)))
    assert result(d).stored is False
    assert stored(store) is None


def test_an_answer_without_tags_of_its_own_keeps_the_marks_of_the_lookup() -> None:
    refresher, fetcher, _, store = make(freshness="origin", tags=["t"])
    d = lookup(refresher)
    purge(refresher, ["t"])  # during the fetch: the value is purged as soon as it lands
    fetcher.answer(fetched())
    assert result(d).stored is True
    assert not lookup(refresher).called  # read as absent: fetched again


def test_a_refresh_revalidates_and_a_304_renews_the_value_without_its_body() -> None:
    refresher, fetcher, clock, store = make(stale=100.0)
    lookup(refresher)
    assert fetcher.calls[0].validators == ("", "")
    validators = ('"v1"', "Sun, 06 Dec 2026 20:00:00 GMT")
    fetcher.answer(fetched(b"body", validators=validators))
    first = stored(store)
    assert first is not None and first.validators == validators
    clock.advance(61)
    assert result(lookup(refresher)).status == "stale"
    assert fetcher.calls[1].validators == validators
    fetcher.answer(Fetched(b"", "", not_modified=True))
    renewed = stored(store)
    assert renewed is not None
    assert (renewed.body, renewed.content_type, renewed.etag) == (
        b"body",
        "text/plain",
        first.etag,
    )
    assert renewed.fresh_until == clock.seconds() + 60
    assert renewed.validators == validators
    answer = result(lookup(refresher))
    assert (answer.status, answer.entry.etag) == ("hit", first.etag)
    assert (
        refresher.metrics.registry.get_sample_value(
            "refresherd_fetches_total", {"job": "j", "outcome": "not_modified"}
        )
        == 1
    )


def test_a_hard_purged_value_is_fetched_whole_not_revalidated() -> None:
    refresher, fetcher, _, _ = make()
    lookup(refresher)
    fetcher.answer(fetched(validators=('"v1"', "")))
    result(Deferred.fromCoroutine(refresher.purge([], ["j"], [], False)))
    lookup(refresher)
    assert fetcher.calls[1].validators == ("", "")


def test_a_python_job_is_never_asked_to_revalidate() -> None:
    clock = task.Clock()
    store = MemoryStore(clock)
    fetcher = FakeFetcher()
    config = JobConfig(name="j", fetch="python", callable="x:y", args=("id",), fresh=1.0)
    refresher = Refresher(store, {"j": Job(config, fetcher)}, clock, "rfd", metrics_for(["j"]))
    lookup(refresher)
    fetcher.answer(fetched(validators=('"v1"', "")))
    clock.advance(2)
    lookup(refresher)
    assert fetcher.calls[1].validators == ("", "")


@implementer(IStore)
class CountingStore:
    """A memory store seen without IReadsAtHand, counting the reads of purge tokens."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.shared = False
        self.token_reads = 0
        self.reads = 0

    def read(self, key: str, keys: Any, cached: bool = True) -> Any:
        self.reads += 1
        return self.store.read(key, keys, cached)

    def get_purge_tokens(self, keys: Any) -> Any:
        self.token_reads += 1
        return self.store.get_purge_tokens(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_the_tags_of_its_own_are_read_with_the_entry_after_the_first_read() -> None:
    clock = task.Clock()
    counting = CountingStore(MemoryStore(clock))
    fetcher = FakeFetcher()
    config = JobConfig(
        name="j", fetch="http", url="http://o/{id}", args=("id",), fresh=60.0, freshness="origin"
    )
    refresher = Refresher(
        counting,
        {"j": Job(config, fetcher)},
        clock,
        "rfd",
        metrics_for(["j"]),
    )
    lookup(refresher)
    fetcher.answer(fetched(tags=("sale",)))
    assert result(lookup(refresher)).status == "hit"  # learns the entry has tags of its own
    before = (counting.reads, counting.token_reads)
    for _ in range(5):
        assert result(lookup(refresher)).status == "hit"
    assert (counting.reads - before[0], counting.token_reads - before[1]) == (5, 0)
    result(Deferred.fromCoroutine(refresher.purge([], [], ["sale"], False)))
    assert not lookup(refresher).called  # purged: read as absent, fetched again


def test_a_tagged_value_another_process_wrote_meanwhile_is_not_fetched_again() -> None:
    clock = task.Clock()
    clock.advance(1_000_000)
    store = MemoryStore(clock)

    def process(concurrency: int) -> tuple[Refresher, FakeFetcher]:
        fetcher = FakeFetcher()
        config = JobConfig(
            name="j",
            fetch="http",
            url="http://o/{id}",
            args=("id",),
            fresh=60.0,
            stale=100.0,
            freshness="origin",
            concurrency=concurrency,
        )
        refresher = Refresher(
            store, {"j": Job(config, fetcher)}, clock, "rfd", metrics_for(["j"]), random=lambda: 0.9
        )
        return refresher, fetcher

    one, one_fetcher = process(8)
    other, other_fetcher = process(1)

    def ask(refresher: Refresher, id: str) -> Any:
        return as_deferred(lambda: refresher.lookup(refresher.target("j", {"id": id})))

    ask(one, "1")
    one_fetcher.answer(fetched(b"old", tags=("sale",)))
    clock.advance(61)
    ask(other, "2")  # takes the other process's only slot
    assert result(ask(other, "1")).status == "stale"  # its refresh waits for the slot
    assert result(ask(one, "1")).status == "stale"
    one_fetcher.answer(fetched(b"new", tags=("sale",)))  # written, lease released
    other_fetcher.answer(fetched(b"two"), index=0)  # the slot comes free
    assert [call.args for call in other_fetcher.calls] == [{"id": "2"}]
    assert result(ask(other, "1")).entry.body == b"new"


def test_a_job_whose_tags_fill_alike_stores_its_values() -> None:
    refresher, fetcher, _, store = make(tags=["obj:{id}", "obj:{id}", "x", "x"])
    lookup(refresher)
    fetcher.answer(fetched())
    entry = stored(store)
    assert entry is not None and entry.tags == ("obj:1", "x")
    assert result(lookup(refresher)).status == "hit"
    assert len(fetcher.calls) == 1


def an_old_entry(clock: task.Clock, tags: tuple[str, ...], **changes: Any) -> Entry:
    """A stale value written under another configuration of job j, with validators."""
    now = clock.seconds()
    return Entry(
        body=b"old",
        content_type="text/plain",
        fetched_at=now - 100,
        fresh_until=now - 40,
        stale_until=now + 1000,
        error_until=now - 40,
        duration=0.1,
        job="j",
        args={"id": "1"},
        tags=tags,
        etag='W/"old"',
        validators=('"v1"', ""),
        **changes,
    )


def test_a_purge_of_a_tag_the_job_gained_reaches_an_entry_written_without_it() -> None:
    refresher, fetcher, clock, store = make(tags=["new"])
    result(store.put(KEY, attrs.evolve(an_old_entry(clock, ("old",)), fresh_until=2e6), 3600))
    assert result(lookup(refresher)).status == "hit"
    purge(refresher, ["new"])
    assert not lookup(refresher).called  # purged: fetched again
    purge(refresher, ["old"])  # and the tag it carries still reaches it (it is its own now)
    assert len(fetcher.calls) == 1


def test_a_304_renews_with_the_jobs_tags_and_only_origin_jobs_keep_tags_of_their_own() -> None:
    for freshness, tags in (("job", ("new",)), ("origin", ("new", "sale"))):
        refresher, fetcher, clock, store = make(tags=["new"], freshness=freshness, stale=2000.0)
        result(store.put(KEY, an_old_entry(clock, ("sale",)), 3600))
        assert result(lookup(refresher)).status == "stale"
        assert fetcher.calls[0].validators == ('"v1"', "")
        fetcher.answer(Fetched(b"", "", not_modified=True))
        entry = stored(store)
        assert entry is not None and (entry.body, entry.tags) == (b"old", tags), freshness
        for _ in range(3):
            assert result(lookup(refresher)).status == "hit"
        assert len(fetcher.calls) == 1


def test_a_post_job_never_revalidates() -> None:
    refresher, fetcher, clock, store = make(method="POST", stale=2000.0)
    result(store.put(KEY, an_old_entry(clock, ()), 3600))
    result(lookup(refresher))
    assert fetcher.calls[0].validators == ("", "")


def test_a_value_left_unstored_by_a_purge_during_its_fetch_holds_the_old_one_off() -> None:
    refresher, fetcher, clock, store = make(freshness="origin", stale=2000.0, min_refresh=5.0)
    result(store.put(KEY, an_old_entry(clock, ()), 3600))
    assert result(lookup(refresher)).status == "stale"
    purge(refresher, ["elsewhere"])  # some purge by tag during the fetch
    fetcher.answer(fetched(b"new", tags=("sale",)))
    entry = stored(store)
    assert entry is not None and entry.body == b"old"
    assert entry.retry_at == clock.seconds() + 5
    for _ in range(5):
        assert result(lookup(refresher)).status == "stale"
    assert len(fetcher.calls) == 1


def test_the_tags_remembered_are_bounded_by_their_keys_oldest_first(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(refresher_module, "OWN_TAG_KEYS_KEPT", 8)
    refresher, fetcher, _, store = make(freshness="origin")
    for id in ("1", "2", "3"):
        ask_id(refresher, id)
        fetcher.answer(fetched(tags=("a", "b")))  # 4 keys each: 2 tags, hard and soft
        result(ask_id(refresher, id))
    assert list(refresher._own_tags) == ["rfd:j:v1:id=2", "rfd:j:v1:id=3"]
    assert refresher._own_tag_keys == 8


@implementer(IStore)
class HeldPurges:
    """A memory store whose writes of the keys every purge by tag renews wait for the test."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.order: list[str] = []
        self.held: list[Deferred[str]] = []

    def new_purge_token(self, key: str, ttl: float) -> Deferred[str]:
        self.order.append(key)
        if key.endswith(":tags"):
            held: Deferred[str] = Deferred()
            self.held.append(held)
            return held
        return self.store.new_purge_token(key, ttl)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_purge_by_tag_tells_the_fetches_before_it_writes_the_tags_own_keys() -> None:
    clock = task.Clock()
    store = HeldPurges(MemoryStore(clock))
    config = JobConfig(name="j", fetch="python", callable="x:y", fresh=1.0)
    refresher = Refresher(
        store,
        {"j": Job(config, FakeFetcher())},
        clock,
        "rfd",
        metrics_for(["j"]),
    )
    done = Deferred.fromCoroutine(refresher.purge([], [], ["t"], False))
    assert store.order == ["rfd:gen:hard:tags"]  # nothing else until it is written
    store.held[0].callback("token")
    assert store.order == ["rfd:gen:hard:tags", "rfd:gen:hard:tag:t"]
    assert result(done) == 1
