"""
Reloading the configuration (L{refresherd.run.reload}, docs/configuration.md,
"Reloading"): what changed between two configurations (pure), and what each
change does to a running engine, on a L{task.Clock}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from refresherd.config import load_config
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job
from refresherd.core.refresher import Answer, Refresher
from refresherd.errors import (
    ConfigError,
    ReloadRefused,
    ReloadRunning,
    Unauthorized,
    UnknownJob,
)
from refresherd.http.admin import AdminAPI
from refresherd.http.auth import Authorizer
from refresherd.metrics import metrics_for
from refresherd.run.reload import Changes, Reloader, apply_to_engine, diff
from refresherd.run.services import Engine, ThreadPools
from refresherd.run.settings import Setting, Settings
from refresherd.run.wiring import build_engine
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher
from tests.stub_treq import StubTreq

FILE = "refresherd.toml"

BASE = b"""
[auth]
read_tokens = ["old-token"]

[jobs.a]
args = ["id"]
arg_patterns = { id = "[0-9]+" }
url = "http://origin.test/a/{id}"
fresh = "1m"

[jobs.b]
args = ["id"]
url = "http://origin.test/b/{id}"
fresh = "1m"
"""


def settings(
    text: bytes, store: str = "memory://", listen: Setting | None = None, files: Any = None
) -> Settings:
    """The settings of a configuration file C{text}, as start-up makes them."""
    others = files or {}
    config = load_config(FILE, {}, read_file=lambda path: text if path == FILE else others[path])
    return Settings(
        config=config,
        listen=listen or Setting(config.server.listen, f"{FILE}: server.listen"),
        admin_listen=Setting(config.server.admin_listen, f"{FILE}: server.admin_listen"),
        store=Setting(store, "--store"),
        workers=1,
        log_format="text",
    )


# -- what changed: a pure function of two configurations --------------------------------


def test_the_same_file_changes_nothing() -> None:
    """Equal jobs are unchanged, compiled patterns included."""
    changes = diff(settings(BASE), settings(BASE))
    assert changes == Changes()
    assert changes.describe() == "nothing changed"


def test_jobs_added_removed_changed_moved_and_tokens() -> None:
    new = (
        BASE.replace(b"old-token", b"new-token")
        .replace(b'[jobs.b]\nargs = ["id"]', b'[jobs.c]\nargs = ["id"]')
        .replace(b'fresh = "1m"\n\n', b'fresh = "10s"\nversion = 2\n\n')
    )
    changes = diff(settings(BASE), settings(new))
    assert changes == Changes(
        added=("c",), removed=("b",), changed=("a",), moved=("a",), tokens=True
    )
    assert changes.describe() == (
        "added c; changed a (version: new keys); removed b; tokens changed"
    )
    assert changes.to_json()["new_keys"] == ["a"]


def test_a_changed_lifetime_is_a_change_without_new_keys() -> None:
    changes = diff(settings(BASE), settings(BASE.replace(b'fresh = "1m"\n\n', b'fresh = "2m"\n\n')))
    assert (changes.changed, changes.moved, changes.restart) == (("a",), (), ())


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (b'[server]\nlisten = "tcp:9999"\n', "server.listen"),
        (b'[server]\nadmin_listen = "tcp:9998"\n', "server.admin_listen"),
        (b"[server]\nmax_connections = 7\n", "server.max_connections"),
        (b"[server]\naccess_log = true\n", "server.access_log"),
        (b'[store]\nnamespace = "other"\n', "store.namespace"),
    ],
)
def test_what_only_a_restart_changes_is_named(extra: bytes, named: str) -> None:
    assert diff(settings(BASE), settings(extra + BASE)).restart == (named,)


def test_the_store_url_of_the_file_needs_a_restart() -> None:
    old = attrs.evolve(settings(BASE), store=Setting("memory://", f"{FILE}: store.url"))
    new = attrs.evolve(old, store=Setting("memory://?max_bytes=9", f"{FILE}: store.url"))
    assert diff(old, new).restart == ("store.url",)


def test_a_listener_given_on_the_command_line_is_not_the_files() -> None:
    given = Setting("tcp:0", "--listen")
    new = b'[server]\nlisten = "tcp:9999"\n' + BASE
    assert diff(settings(BASE, listen=given), settings(new, listen=given)).restart == ()


def test_the_largest_value_of_a_shared_store_needs_a_restart() -> None:
    larger = BASE + b"max_value_bytes = 99999999\n"
    assert diff(settings(BASE), settings(larger)).restart == ()  # memory://: no limit to read
    shared = "redis://127.0.0.1:6379/0"
    assert diff(settings(BASE, shared), settings(larger, shared)).restart == (
        "the largest jobs.*.max_value_bytes (a shared store's limit)",
    )


# -- what a reload does to a running engine -------------------------------------------------


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.fetchers: dict[tuple[str, int], FakeFetcher] = {}
        self.file = BASE
        self.current = settings(BASE)
        jobs = {
            name: self.make_job(c, ThreadPools()) for name, c in self.current.config.jobs.items()
        }
        self.metrics = metrics_for(jobs, seconds=self.clock.seconds)
        refresher = Refresher(MemoryStore(self.clock), jobs, self.clock, "rfd", self.metrics)
        self.engine = Engine(
            refresher, ThreadPools(), HotKeysRegistry(), make_job=self.make_job, warms=True
        )
        self.authorizer = Authorizer.from_config(self.current.config.auth)
        self.admin_checks: list[Authorizer] = []
        self.reloader = Reloader(
            self.current,
            lambda: settings(self.file),
            apply_to_engine(self.engine, self.authorizer, self.check_admin, self.clock),
            self.metrics,
        )
        self.engine.startService()

    def tearDown(self) -> None:
        stopped = self.engine.stopService()
        self.clock.advance(60)  # the drain of fetches left pending
        self.successResultOf(stopped)

    def make_job(self, config: Any, pools: ThreadPools) -> Job:
        """Each configuration of a job gets a fetcher of its own (by its C{fresh})."""
        fetcher = self.fetchers.setdefault((config.name, int(config.fresh)), FakeFetcher())
        return Job(config, fetcher)

    def check_admin(self, new: Settings, authorizer: Authorizer) -> None:
        self.admin_checks.append(authorizer)

    @property
    def refresher(self) -> Refresher:
        return self.engine.refresher

    def reload(self, text: bytes) -> dict[str, Any]:
        self.file = text
        return self.successResultOf(self.reloader.reload())

    def refused(self, text: bytes) -> str:
        self.file = text
        failure = self.failureResultOf(self.reloader.reload(), ReloadRefused)
        return str(failure.value.message)

    def lookup(self, job: str, **args: str) -> Deferred[Answer]:
        answer = self.refresher.lookup(self.refresher.target(job, args))
        assert isinstance(answer, Deferred)
        return answer

    def test_a_new_job_serves_at_once(self) -> None:
        reloaded = self.reload(BASE + b'[jobs.c]\nurl = "http://origin.test/c"\nfresh = "1m"\n')
        assert reloaded == {
            "source": FILE,
            "jobs": ["a", "b", "c"],
            "added": ["c"],
            "changed": [],
            "removed": [],
            "new_keys": [],
            "tokens": False,
        }
        pending = self.lookup("c")
        self.fetchers["c", 60].succeed()
        assert self.successResultOf(pending).status == "miss"
        assert "c" in self.metrics.jobs
        self.metrics.count_request("c", "miss")  # counted as itself, not _unknown

    def test_a_removed_job_answers_its_waiting_callers_then_unknown_job(self) -> None:
        waiting = self.lookup("b", id="1")
        self.reload(BASE.split(b"[jobs.b]")[0])
        with pytest.raises(UnknownJob):
            self.refresher.target("b", {"id": "1"})
        self.fetchers["b", 60].succeed()
        assert self.successResultOf(waiting).status == "miss"

    def test_a_changed_job_finishes_its_fetches_under_the_old_settings(self) -> None:
        waiting = self.lookup("a", id="1")
        self.reload(BASE.replace(b'fresh = "1m"\n\n', b'fresh = "10s"\n\n'))
        joined = self.lookup("a", id="1")  # the same key: joins the fetch in flight
        self.fetchers["a", 60].succeed()
        for answer in (self.successResultOf(waiting), self.successResultOf(joined)):
            assert answer.entry is not None
            assert answer.entry.fresh_until == self.clock.seconds() + 60
        assert len(self.fetchers["a", 60].calls) == 1
        assert self.fetchers["a", 10].calls == []  # nothing fetched twice
        fresh = self.lookup("a", id="2")  # a new fetch: the new job
        self.fetchers["a", 10].succeed()
        entry = self.successResultOf(fresh).entry
        assert entry is not None and entry.fresh_until == self.clock.seconds() + 10

    def test_a_new_version_moves_the_job_to_new_keys(self) -> None:
        assert self.refresher.target("a", {"id": "1"}).key == "rfd:a:v1:id=1"
        self.reload(BASE.replace(b'fresh = "1m"\n\n', b'fresh = "1m"\nversion = 2\n\n'))
        assert self.refresher.target("a", {"id": "1"}).key == "rfd:a:v2:id=1"

    def test_an_unchanged_job_keeps_its_fetcher_and_slots(self) -> None:
        before = self.refresher.jobs["b"]
        self.reload(BASE.replace(b'fresh = "1m"\n\n', b'fresh = "10s"\n\n'))
        assert self.refresher.jobs["b"] is before

    def test_tokens_change_at_once(self) -> None:
        self.authorizer.check_read(b"Bearer old-token")
        reloaded = self.reload(BASE.replace(b"old-token", b"new-token"))
        assert reloaded["tokens"] is True
        with pytest.raises(Unauthorized):
            self.authorizer.check_read(b"Bearer old-token")
        self.authorizer.check_read(b"Bearer new-token")
        assert [a.tokens for a in self.admin_checks] == [self.authorizer.tokens]

    def test_a_success_is_logged_and_counted(self) -> None:
        self.clock.advance(30)
        with _Logged() as logged:
            self.reload(BASE.replace(b"old-token", b"new-token"))
        assert logged.lines == [
            "refresherd: reloaded refresherd.toml: 2 job(s) (a, b); tokens changed"
        ]
        assert self.metrics.reload_successful
        assert self.metrics.reload_success_at == self.clock.seconds()

    def test_a_broken_file_changes_nothing_and_says_why(self) -> None:
        jobs, tokens = self.refresher.jobs, self.authorizer.tokens
        started = self.metrics.reload_success_at
        self.clock.advance(30)
        with _Logged() as logged:
            message = self.refused(BASE + b"[jobs.c]\nfresh = 1\nurl = 3\n")
        assert message == "refresherd.toml: jobs.c.url: must be a string, not an integer"
        assert logged.lines == [
            f"refresherd: {message} (reload refused: the configuration loaded before is "
            "still served)"
        ]
        assert self.refresher.jobs is jobs and self.authorizer.tokens == tokens
        assert not self.metrics.reload_successful
        assert self.metrics.reload_success_at == started
        self.reload(BASE)  # and the next good one goes through
        assert self.metrics.reload_successful

    def test_what_only_a_restart_changes_refuses_the_whole_reload(self) -> None:
        jobs = self.refresher.jobs
        message = self.refused(
            b'[server]\nlisten = "tcp:9999"\n' + BASE.replace(b"old-token", b"new-token")
        )
        assert message == "refresherd.toml: only a restart changes server.listen"
        assert self.refresher.jobs is jobs
        self.authorizer.check_read(b"Bearer old-token")

    def test_a_job_that_cannot_be_built_refuses_the_whole_reload(self) -> None:
        def failing(config: Any, pools: ThreadPools) -> Job:
            if config.name == "c":
                raise ConfigError(f"{FILE}: jobs.c.callable: no module named 'nowhere'")
            return self.make_job(config, pools)

        self.engine.make_job = failing
        jobs = self.refresher.jobs
        message = self.refused(BASE + b'[jobs.c]\ncallable = "nowhere:f"\nfresh = "1m"\n')
        assert message == "refresherd.toml: jobs.c.callable: no module named 'nowhere'"
        assert self.refresher.jobs is jobs

    def test_one_reload_at_a_time(self) -> None:
        pending: Deferred[None] = Deferred()
        self.reloader.apply = lambda old, new, changes: pending
        first = self.reloader.reload()
        self.failureResultOf(self.reloader.reload(), ReloadRunning)
        pending.callback(None)
        assert self.successResultOf(first)["jobs"] == ["a", "b"]
        self.successResultOf(self.reloader.reload())  # and then another

    def test_a_warm_list_added_is_kept_ready(self) -> None:
        assert self.engine.warmer is None
        self.reload(BASE + b'warm = [{id = "7"}]\n')
        self.clock.advance(0)
        warmer = self.engine.warmer
        assert warmer is not None and warmer.running
        assert [call.args for call in self.fetchers["b", 60].calls] == [{"id": "7"}]
        self.reload(BASE)
        assert self.engine.warmer is None and not warmer.running


def test_the_real_fetchers_are_built_and_a_bad_callable_refused() -> None:
    """The wiring's own job factory: a python job's function resolved, or the start-up line."""
    clock = task.Clock()
    old = settings(BASE)
    engine = build_engine(old.config.jobs, FILE, MemoryStore(clock), "rfd", clock)
    reloader = Reloader(
        old,
        lambda: settings(BASE + b'[jobs.p]\ncallable = "tests.nowhere:f"\nfresh = "1m"\n'),
        apply_to_engine(engine, Authorizer(()), lambda new, tokens: None, clock),
        engine.refresher.metrics,
    )
    with _Logged():
        refused: list[Any] = []
        reloader.reload().addErrback(refused.append)
    [failure] = refused
    assert isinstance(failure.value, ReloadRefused)
    assert failure.value.message.startswith("refresherd.toml: jobs.p.callable: ")
    reloader.read = lambda: settings(BASE + b'[jobs.p]\ncallable = "tests.jobs:pid"\nfresh = 1\n')
    done: list[dict[str, Any]] = []
    reloader.reload().addCallback(done.append)
    assert done[0]["added"] == ["p"]
    [pool] = engine.pools.pools
    assert pool.name == "refresherd-job-p"


# -- the admin route -------------------------------------------------------------------------


class AdminRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.answer: Deferred[dict[str, Any]] = Deferred()
        self.asked = 0

    def post(self, reload: Any, headers: Mapping[bytes, list[bytes]] | None = None) -> Any:
        refresher = Refresher(MemoryStore(self.clock), {}, self.clock, "rfd", metrics_for([]))
        api = AdminAPI(refresher, Authorizer(()), refresher.metrics, self.clock, reload=reload)
        treq = StubTreq(api.resource())
        d = treq.post(
            "http://127.0.0.1:8081/v1/reload",
            data=b"{}",
            headers=headers if headers is not None else {b"Content-Type": [b"application/json"]},
        )
        treq.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_the_reload_answers_what_changed(self) -> None:
        changed = {"source": FILE, "jobs": ["a"], "added": ["a"]}
        assert self.post(lambda: _succeed(changed)) == (
            200,
            changed,
        )

    def test_a_refusal_is_the_documented_error_object(self) -> None:
        error = ReloadRefused("refresherd.toml: jobs.c.url: must be a string, not an integer")
        assert self.post(lambda: _fail(error)) == (422, error.to_json())
        running = ReloadRunning("a reload is running: one at a time")
        assert self.post(lambda: _fail(running)) == (409, running.to_json())

    def test_a_process_that_cannot_reload_answers_501(self) -> None:
        code, body = self.post(None)
        assert (code, body["error"]["code"]) == (501, "reload_unsupported")

    def test_an_admin_post_needs_json(self) -> None:
        code, body = self.post(lambda: _succeed({}), headers={})
        assert (code, body["error"]["code"]) == (415, "unsupported_media_type")


def _succeed(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


def _fail(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


class _Logged:
    """The text of the reload's lines logged meanwhile (globally)."""

    def __enter__(self) -> _Logged:
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        return self

    @property
    def lines(self) -> list[str]:
        return [
            formatEvent(event) for event in self.observer if "reload" in (formatEvent(event) or "")
        ]

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self.observer)
