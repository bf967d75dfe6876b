"""
Purges (docs/admin.md, "`POST /v1/purge`" and "How purges by job and tag work")
in one process on task.Clock: by key, by job and by tag, hard and soft, with
fetches in flight, and the refreshes operators start (docs/admin.md,
"`POST /v1/jobs/{job}/refresh?{args}`"); the same logic runs on every store
through the generation contract.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from refresherd import errors
from refresherd.config import JobConfig
from refresherd.core import marks, policy
from refresherd.core.jobs import Job
from refresherd.core.marks import Purge
from refresherd.core.refresher import Answer, Refresher
from refresherd.keys import generation_key
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher, UnreachableStore
from tests.deferreds import as_deferred, failure, outcome, result
from tests.unit.test_refresher import body_of, counter


class World:
    """Two jobs on one memory store: C{user} tagged per user and C{team}, and C{team}."""

    def __init__(self, store: Any = None, **policy: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.store = store if store is not None else MemoryStore(self.clock)
        self.fetchers = {"user": FakeFetcher(), "team": FakeFetcher()}
        policy.setdefault("fresh", 60.0)
        policy.setdefault("stale", 600.0)
        policy.setdefault("early_refresh", 0.0)
        configs = {
            "user": JobConfig(
                name="user",
                fetch="python",
                callable="x:y",
                args=("id", "team"),
                tags=("user:{id}", "team:{team}"),
                **policy,
            ),
            "team": JobConfig(
                name="team",
                fetch="python",
                callable="x:y",
                args=("team",),
                tags=("team:{team}",),
                **policy,
            ),
        }
        self.refresher = Refresher(
            self.store,
            {name: Job(config, self.fetchers[name]) for name, config in configs.items()},
            self.clock,
            "rfd",
            metrics_for(configs),
        )

    def lookup(self, job: str = "user", **args: str) -> Deferred[Answer]:
        args = args or {"id": "1", "team": "red"}
        refresher = self.refresher
        return as_deferred(lambda: refresher.lookup(refresher.target(job, args)))

    def fetched(self, job: str = "user", body: bytes = b'"v1"') -> None:
        self.fetchers[job].succeed(body=body)

    def cached(self, job: str = "user", body: bytes = b'"v1"', /, **args: str) -> Answer:
        """Look up and fetch, so that the value is in the store (C{args} may be named anything)."""
        d = self.lookup(job, **args)
        self.fetched(job, body)
        answer: Answer = result(d)
        assert answer.status == "miss"
        return answer

    def purge(
        self,
        keys: list[str] | None = None,
        jobs: list[str] | None = None,
        tags: list[str] | None = None,
        soft: bool = False,
    ) -> Any:
        d = Deferred.fromCoroutine(self.refresher.purge(keys or [], jobs or [], tags or [], soft))
        return outcome(d)

    def calls(self, job: str = "user") -> int:
        return len(self.fetchers[job].calls)


BOB = {"id": "bob", "team": "red"}
ANN = {"id": "ann", "team": "blue"}


def test_a_hard_purge_of_a_key_makes_the_next_request_a_miss() -> None:
    world = World()
    key = world.cached(**BOB).key
    assert world.purge(keys=[key]) == 1
    d = world.lookup(**BOB)
    assert not d.called and world.calls() == 2
    world.fetched(body=b'"v2"')
    answer = result(d)
    assert (answer.status, body_of(answer)) == ("miss", b'"v2"')


def test_a_soft_purge_of_a_key_serves_the_old_value_while_one_refresh_runs() -> None:
    world = World()
    key = world.cached(**BOB).key
    assert world.purge(keys=[key], soft=True) == 1
    answers = [result(world.lookup(**BOB)) for _ in range(20)]
    assert {(a.status, body_of(a)) for a in answers} == {("stale", b'"v1"')}
    assert world.calls() == 2
    world.fetched(body=b'"v2"')
    fresh = result(world.lookup(**BOB))
    assert (fresh.status, body_of(fresh)) == ("hit", b'"v2"')
    assert world.calls() == 2


def test_a_soft_purged_value_stays_servable_for_one_refresh_even_with_stale_0() -> None:
    world = World(stale=0.0)
    key = world.cached(**BOB).key
    world.clock.advance(59)
    world.purge(keys=[key], soft=True)
    world.clock.advance(5)  # past its own freshness, not past one refresh's lease
    answer = result(world.lookup(**BOB))
    assert (answer.status, body_of(answer)) == ("stale", b'"v1"')
    assert world.calls() == 2


def test_a_soft_purge_of_an_absent_key_does_nothing() -> None:
    world = World()
    key = world.refresher.target("user", BOB).key
    assert world.purge(keys=[key], soft=True) == 1
    assert result(world.store.get(key)) is None


def test_a_purge_of_a_tag_reaches_every_entry_with_it_and_no_other() -> None:
    world = World()
    world.cached(**BOB)
    world.cached(**ANN)
    world.cached("team", team="red")
    world.cached("team", team="blue")
    assert world.purge(tags=["team:red"]) == 1
    assert not world.lookup(**BOB).called  # a miss: fetching again
    assert not world.lookup("team", team="red").called
    assert result(world.lookup(**ANN)).status == "hit"
    assert result(world.lookup("team", team="blue")).status == "hit"
    assert (world.calls("user"), world.calls("team")) == (3, 3)


def test_a_soft_purge_of_a_tag_serves_stale_and_refreshes_each_entry_once() -> None:
    world = World()
    world.cached(**BOB)
    world.cached(**ANN)
    world.purge(tags=["user:bob"], soft=True)
    for _ in range(5):
        assert result(world.lookup(**BOB)).status == "stale"
        assert result(world.lookup(**ANN)).status == "hit"
    assert world.calls() == 3
    world.fetched(body=b'"v2"')
    answer = result(world.lookup(**BOB))
    assert (answer.status, body_of(answer)) == ("hit", b'"v2"')
    assert world.calls() == 3


def test_a_soft_purged_value_is_stale_as_of_the_time_a_lookup_is_given() -> None:
    # A request read a moment before the clock's time now (the public listener passes the
    # time it read it): the purge is applied as of that time, not the clock's.
    world = World()
    world.cached(**BOB)
    world.purge(tags=["user:bob"], soft=True)
    world.clock.advance(0.5)
    refresher = world.refresher
    answer = refresher.lookup(refresher.target("user", BOB), world.clock.seconds() - 0.25)
    assert isinstance(answer, Answer) and answer.status == "stale"
    assert world.calls() == 2


def test_a_purge_of_a_job_reaches_every_entry_of_the_job_only() -> None:
    world = World()
    world.cached(**BOB)
    world.cached(**ANN)
    world.cached("team", team="red")
    assert world.purge(jobs=["user"]) == 1
    assert not world.lookup(**BOB).called
    assert not world.lookup(**ANN).called
    assert result(world.lookup("team", team="red")).status == "hit"


def test_purges_add_up_and_are_counted_by_kind() -> None:
    world = World()
    key = world.cached(**BOB).key
    assert world.purge(keys=[key], jobs=["user", "team"], tags=["a", "b", "c"]) == 6
    metric = "refresherd_purged_total"
    counts = {kind: counter(world.refresher, metric, kind=kind) for kind in ("key", "job", "tag")}
    assert counts == {"key": 1, "job": 2, "tag": 3}


def test_a_value_fetched_before_a_tag_purge_is_purged_when_it_lands() -> None:
    """A fetch that began before the purge writes a value the purge already covers."""
    world = World()
    waiting = world.lookup(**BOB)
    world.purge(tags=["user:bob"])
    world.fetched(body=b'"before the purge"')
    assert body_of(result(waiting)) == b'"before the purge"'  # asked before the purge
    again = world.lookup(**BOB)
    assert not again.called and world.calls() == 2
    world.fetched(body=b'"after"')
    assert body_of(result(again)) == b'"after"'
    assert result(world.lookup(**BOB)).status == "hit"


def test_a_fetch_running_during_a_soft_purge_of_its_key_cannot_overwrite_it() -> None:
    world = World(fresh=10.0)
    key = world.cached(**BOB).key
    world.clock.advance(11)
    assert result(world.lookup(**BOB)).status == "stale"  # a refresh starts
    world.purge(keys=[key], soft=True)
    world.fetched(body=b'"began before the purge"')
    answer = result(world.lookup(**BOB))
    assert (answer.status, body_of(answer)) == ("stale", b'"v1"')
    assert world.calls() == 3  # the purge's own refresh


def test_a_put_after_a_purge_is_not_purged() -> None:
    world = World()
    world.cached(**BOB)
    world.purge(tags=["team:red"])
    put = Deferred.fromCoroutine(
        world.refresher.put(world.refresher.target("user", BOB), b'"put"', "application/json")
    )
    assert result(put).status == "hit"
    answer = result(world.lookup(**BOB))
    assert (answer.status, body_of(answer)) == ("hit", b'"put"')


def test_failing_refreshes_after_a_soft_purge_do_not_keep_the_value_for_ever() -> None:
    world = World(stale=0.0, error_ttl=1.0)
    world.cached(**BOB)
    world.purge(tags=["user:bob"], soft=True)
    assert result(world.lookup(**BOB)).status == "stale"
    world.fetchers["user"].fail()
    world.clock.advance(61)  # past the value's freshness and one refresh's lease
    assert not world.lookup(**BOB).called  # absent: the purge was spent by that refresh


def test_a_purge_with_a_bad_key_or_unknown_job_does_nothing() -> None:
    world = World()
    key = world.cached(**BOB).key
    bad = [" rfd:user:v1:x", "other:user:v1:id=1", "rfd:lease:user:v1:id=bob", "x" * 300, ""]
    for keys, jobs in [([key, k], []) for k in bad] + [([key], ["nope"])]:
        with pytest.raises((errors.BadArgs, errors.UnknownJob)):
            world.purge(keys=keys, jobs=jobs)
    assert result(world.lookup(**BOB)).status == "hit"


def test_a_purge_with_the_store_unreachable_is_store_unavailable() -> None:
    world = World()
    world.refresher = attrs.evolve(world.refresher, store=UnreachableStore(world.store))
    with pytest.raises(errors.StoreUnavailable):
        world.purge(tags=["team:red"])
    assert counter(world.refresher, "refresherd_store_errors_total", operation="purge") == 1


def test_inspect_shows_the_entry_and_the_purge_that_hit_it() -> None:
    world = World()
    key = world.cached(**BOB).key
    entry, purge = result(Deferred.fromCoroutine(world.refresher.inspect(key)))
    assert (entry.job, dict(entry.args), purge) == ("user", BOB, None)
    world.purge(tags=["team:red"], soft=True)
    assert result(Deferred.fromCoroutine(world.refresher.inspect(key)))[1] is Purge.SOFT
    world.purge(jobs=["user"])
    assert result(Deferred.fromCoroutine(world.refresher.inspect(key)))[1] is Purge.HARD
    missing = world.refresher.target("user", ANN).key
    assert isinstance(
        failure(Deferred.fromCoroutine(world.refresher.inspect(missing))), errors.NotFound
    )


def test_refresh_starts_one_fetch_even_of_a_fresh_value() -> None:
    world = World()
    key = world.cached(**BOB).key
    for _ in range(3):
        assert (
            result(
                Deferred.fromCoroutine(world.refresher.refresh(world.refresher.target("user", BOB)))
            )
            == key
        )
    assert world.calls() == 2
    world.fetched(body=b'"v2"')
    assert body_of(result(world.lookup(**BOB))) == b'"v2"'


def test_a_purge_expires_once_no_entry_it_marks_or_predates_can_live() -> None:
    """
    A generation key lives past every entry written before its purge (else they would read as
    unpurged), and each entry written with its mark pushes its expiry out (else that entry would
    read as purged once more); then it expires, so purges of many tags do not pile up.
    """
    world = World()
    config = world.refresher.jobs["user"].config
    generation = generation_key("rfd", "job", "user", hard=True)
    world.cached(**BOB)
    world.purge(jobs=["user"])
    grace = policy.lease_ttl(config.timeout, config.retries)
    ttl = 60 + 600 + grace + policy.STORE_MARGIN + marks.GENERATION_MARGIN
    world.clock.advance(ttl - 100)
    assert result(world.store.get_purge_tokens([generation]))  # still there
    ann = world.cached(**ANN)  # marked with the purge's token
    world.clock.advance(200)  # past the purge's own expiry
    assert result(world.store.get_purge_tokens([generation]))  # renewed by ann's write
    assert result(world.lookup(**ANN)).status == "stale"  # not purged once more
    assert world.calls() == 3  # bob, ann, ann's refresh now it is stale
    stored = ann.entry.expires_at + policy.STORE_MARGIN if ann.entry else 0.0
    world.clock.advance(stored + marks.GENERATION_MARGIN - world.clock.seconds() + 1)
    assert result(world.store.get_purge_tokens([generation])) == {}
