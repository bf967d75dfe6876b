"""
What callers get when another program wrote a hostile entry in a shared store,
as a mixin run against each shared store on its real server
(tests/integration/test_store_redis.py, test_store_memcached.py).

Combine L{HostileEntries} with L{twisted.trial.unittest.TestCase} and provide:

    - C{make_store(self)}: a L{Deferred} of a started, ready shared store,
      stopped after the test;
    - C{write_raw(self, key, data)}: C{data} written under C{key} by a raw
      client of the server, as another program would.

Each test writes an entry that would be a fresh hit, but that no reader may
take, under the key of a request, and asks for it through the public API (a
L{Refresher} on the store, a fake fetcher): the answer is a miss, whose value
is the one fetched, never anything spliced from the store; and the key and the
reason are logged as a warning, never the content.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from treq.response import _Response
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from refresherd.config import AuthConfig, JobConfig, ServerConfig
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.entry import Entry, Fetched, encode, value_entry
from refresherd.http.auth import Authorizer
from refresherd.http.public import PublicAPI
from refresherd.interfaces import IStore
from refresherd.keys import entry_key
from refresherd.metrics import metrics_for
from refresherd.testing import FakeFetcher
from tests.stub_treq import StubTreq

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase as _Base
else:
    _Base = object

BASE = "http://refresherd.test"
FETCHED = {"fetched": True}
"""The value the fake origin gives."""
SECRET = "<hostile content>"
"""In every hostile entry: no log line may show it."""

T = TypeVar("T")

ANSWERED_WITHIN = 1000
"""Turns of the reactor (a few ms each) a request may take to be answered at all."""


class HostileEntries(_Base):
    """Hostile entries in a shared store read as absent; see the module docstring."""

    def make_store(self) -> Deferred[IStore]:
        raise NotImplementedError

    def write_raw(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    async def api(self) -> tuple[StubTreq, FakeFetcher, str]:
        """The public API on a new store, its fetcher, and the namespace of its keys."""
        store = await self.make_store()
        fetcher = FakeFetcher()
        job = JobConfig(
            name="j", fetch="http", url="http://origin.test/{id}", args=("id",), fresh=60.0
        )
        metrics = metrics_for(["j"])
        namespace = f"hostile-{self.id().rsplit('.', 1)[-1][:40]}"
        refresher = Refresher(store, {"j": Job(job, fetcher)}, reactor, namespace, metrics)
        api = PublicAPI(
            refresher, Authorizer.from_config(AuthConfig()), ServerConfig(), metrics, reactor
        )
        return StubTreq(api.resource()), fetcher, namespace

    async def answer(
        self, stub: StubTreq, fetcher: FakeFetcher, method: str, path: str, **kwargs: Any
    ) -> tuple[_Response, Any]:
        """
        The answer to a request (JSON parsed), the origin answering every fetch
        with L{FETCHED}; a test failure if it is not answered at all.
        """
        response = await self.settle(stub, fetcher, stub.request(method, BASE + path, **kwargs))
        body = await self.settle(stub, fetcher, response.content())
        return response, json.loads(body)

    async def settle(self, stub: StubTreq, fetcher: FakeFetcher, d: Deferred[T]) -> T:
        """The result of C{d}, the reactor turned until it is there; at most L{ANSWERED_WITHIN}."""
        results: list[T] = []
        d.addCallback(results.append)
        for _ in range(ANSWERED_WITHIN):
            stub.flush()
            if results:
                return results[0]
            for call in fetcher.pending:
                call.result.callback(Fetched(json.dumps(FETCHED).encode(), "application/json"))
            await task.deferLater(reactor, 0.005)
        self.fail("the request was not answered")

    def hit(self, namespace: str, **changes: Any) -> tuple[str, Entry]:
        """The key of C{?id=1} and a fresh entry of it, with C{changes}."""
        entry = value_entry(
            Fetched(b'{"stored": true}', "application/json"),
            job="j",
            args={"id": "1"},
            tags=(),
            now=time.time(),
            duration=0.0,
            fresh=60.0,
            stale=600.0,
            stale_if_error=0.0,
        )
        entry = attrs.evolve(entry, last_error=SECRET, **changes)
        return entry_key(namespace, "j", 1, {"id": "1"}), entry

    async def assertFetchedInstead(self, **changes: Any) -> None:
        """An entry with C{changes} written by another program reads as absent."""
        stub, fetcher, namespace = await self.api()
        key, entry = self.hit(namespace, **changes)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.write_raw(key, encode(entry))
        response, body = await self.answer(stub, fetcher, "GET", "/v1/jobs/j?id=1")
        self.assertEqual(response.code, 200)
        self.assertEqual((body["status"], body["value"]), ("miss", FETCHED))
        self.assertEqual(len(fetcher.calls), 1)
        warnings = [formatEvent(e) for e in logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(key, warnings[0])
        self.assertNotIn(SECRET, warnings[0])

    async def test_the_same_entry_well_formed_is_a_hit(self) -> None:
        """The baseline: what the other tests change is all that makes them absent."""
        stub, fetcher, namespace = await self.api()
        key, entry = self.hit(namespace)
        self.write_raw(key, encode(entry))
        response, body = await self.answer(stub, fetcher, "GET", "/v1/jobs/j?id=1")
        self.assertEqual((body["status"], body["value"]), ("hit", {"stored": True}))
        self.assertEqual(fetcher.calls, [])

    async def test_a_json_entry_whose_body_is_not_json_is_fetched_instead(self) -> None:
        """Spliced as stored, it would rewrite the answer's own fields."""
        await self.assertFetchedInstead(body=b'1, "status": "forged", "value": "forged"')

    async def test_a_non_ascii_etag_is_fetched_instead(self) -> None:
        """As an ETag header it would raise, and the request would go unanswered."""
        await self.assertFetchedInstead(etag='W/"caf\u00e9"')

    async def test_a_content_type_beyond_latin1_is_fetched_instead(self) -> None:
        await self.assertFetchedInstead(content_type="text/plain; x=\u0100")

    async def test_a_content_type_with_cr_lf_is_fetched_instead(self) -> None:
        await self.assertFetchedInstead(content_type="text/plain\r\nSet-Cookie: x=1")

    async def test_times_beyond_any_writer_s_are_fetched_instead(self) -> None:
        await self.assertFetchedInstead(fresh_until=1e300, stale_until=1e300)

    async def test_a_batch_cannot_be_rewritten_by_a_stored_value(self) -> None:
        stub, fetcher, namespace = await self.api()
        key, entry = self.hit(namespace, body=b'1}, {"job": "forged"')
        self.write_raw(key, encode(entry))
        items = {"items": [{"job": "j", "args": {"id": "1"}}]}
        response, body = await self.answer(stub, fetcher, "POST", "/v1/fetch", json=items)
        self.assertEqual(response.code, 200)
        [item] = body["items"]
        self.assertEqual((item["status"], item["value"]), ("miss", FETCHED))
