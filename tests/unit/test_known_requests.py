"""
A request read before (the same bytes, alone in a read) is answered from what
was kept of it: its parse, its target, and the head of its last hit.  Its
answers must be byte for byte those of the same request read for the first
time, whatever changed in between: the clock (C{Date}, C{Age}, C{Cache-Status}
C{ttl}, the JSON's C{age}), the value, a purge, the jobs (a reload), a
conditional request's match.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import http

from refresherd.config import AuthConfig, JobConfig, ServerConfig
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.http import answers, fastpath
from refresherd.http.auth import Authorizer
from refresherd.http.public import PublicAPI
from refresherd.http.wire import WireChannel, WireSite
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.stores.near import NearCache
from refresherd.testing import FakeFetcher

pytestmark = pytest.mark.unit


def job(name: str, fresh: float = 10.0) -> JobConfig:
    return JobConfig(
        name=name, fetch="http", url="http://o.test/{id}", args=("id",), fresh=fresh, stale=60.0
    )


class Service:
    def __init__(self, clock: Clock | None = None, near: bool = False) -> None:
        self.clock = clock or Clock()
        self.clock.advance(1_800_000_000.25)
        self.jobs = {"j": job("j")}
        store = MemoryStore(self.clock)
        self.refresher = Refresher(
            NearCache(store, self.clock) if near else store,
            {name: Job(config, FakeFetcher()) for name, config in self.jobs.items()},
            self.clock,
            "rfd",
            metrics_for(self.jobs),
            random=lambda: 0.999,
        )
        api = PublicAPI(
            self.refresher,
            Authorizer.from_config(AuthConfig()),
            ServerConfig(),
            metrics_for(self.jobs),
            self.clock,
        )
        self.site = WireSite(api.resource(), api.body_limit, self.clock)
        self.site.quick = api.quick()
        self.proto, self.transport = self.connect()
        self.fresh = itertools.count()

    def connect(self) -> tuple[WireChannel, StringTransport]:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def put(self, body: bytes) -> None:
        target = self.refresher.target("j", {"id": "1"})
        done = defer.ensureDeferred(self.refresher.put(target, body, "application/json"))
        assert done.called

    def known(self, request: bytes) -> bytes:
        """The answer on the one connection that has read C{request} before."""
        self.transport.clear()
        self.proto.dataReceived(request)
        return bytes(self.transport.value())

    def first_time(self, request: bytes) -> bytes:
        """The answer to C{request} read for the first time: a new connection, never known."""
        kept = dict(self.site.known)
        self.site.known.clear()
        proto, transport = self.connect()
        proto.dataReceived(request)
        answer = bytes(transport.value())
        self.site.known.clear()
        self.site.known.update(kept)
        return answer


REQUESTS = {
    "json": b"GET /v1/jobs/j?id=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    "raw": b"GET /v1/jobs/j/raw?id=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    "head": b"HEAD /v1/jobs/j/raw?id=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    "conditional": b'GET /v1/jobs/j/raw?id=1 HTTP/1.1\r\nIf-None-Match: W/"x", *\r\n\r\n',
}


def steps(service: Service) -> Iterator[str]:
    yield "first"
    service.put(b'{"v": 1.5}')
    yield "a new value in the same instant"
    for delay in (0.0, 0.3, 0.5, 0.2, 1.0, 0.01):
        service.clock.advance(delay)
        yield f"+{delay}s"
    service.put(b'{"v": 2}')
    yield "a new value"
    service.clock.advance(10.5)
    yield "stale"
    service.put(b'{"v": 3}')
    done = defer.ensureDeferred(service.refresher.purge([], ["j"], [], soft=True))
    assert done.called
    yield "soft-purged"
    service.clock.advance(0.4)
    yield "soft-purged, later"
    service.refresher.set_jobs({"j": Job(job("j", fresh=30.0), FakeFetcher())})
    service.put(b'{"v": 4}')
    yield "the jobs reloaded"
    service.refresher.set_jobs({})
    yield "the job gone"


@pytest.mark.parametrize("name", list(REQUESTS))
def test_a_known_request_is_answered_byte_for_byte_as_one_read_the_first_time(name: str) -> None:
    service = Service()
    service.put(b'{"v": 1}')
    request = REQUESTS[name]
    for step in steps(service):
        known, first = service.known(request), service.first_time(request)
        assert known == first, step
        assert known.startswith(b"HTTP/1.1 "), step
    assert request in service.site.known


def test_a_known_hit_in_the_same_second_reuses_its_head(monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service()
    service.put(b'{"v": 1}')
    request = REQUESTS["raw"]
    rendered: list[object] = []
    render = answers.render_answer

    def counted(*args: Any, **kwargs: Any) -> bytes:
        rendered.append(args)
        return render(*args, **kwargs)

    monkeypatch.setattr(fastpath, "render_answer", counted)
    given = [service.known(request) for _ in range(3)]
    assert given[0] == given[1] == given[2]
    assert len(rendered) == 1  # the first (made known as it was read)
    service.clock.advance(1.0)
    assert service.known(request) != given[0]  # Date and Age moved on
    assert len(rendered) == 2


def test_an_error_rendering_a_known_hit_is_answered_as_the_first_time(
    monkeypatch: pytest.MonkeyPatch, no_logged_errors: list[dict[str, Any]]
) -> None:
    # _respond answers a bug while rendering with a JSON 500 (every request gets an
    # answer); the kept head's branch called Bodies.body with no such guard.
    service = Service()
    service.put(b'{"v": 1}')
    request = REQUESTS["json"]
    service.known(request)  # its head kept
    body = answers.Bodies.body

    def failing(self: answers.Bodies, answer: Any, now: float) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(answers.Bodies, "body", failing)
    first = service.first_time(request)
    assert first.startswith(b"HTTP/1.1 500 ")
    assert service.known(request) == first
    monkeypatch.setattr(answers.Bodies, "body", body)
    assert len(no_logged_errors) == 2  # each logged, as a bug
    no_logged_errors.clear()


class Moving(Clock):
    """Once moving, a clock that moves on by C{step} seconds each time it is read."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step
        self.moving = False

    def seconds(self) -> float:
        if self.moving:
            self.rightNow += self.step
        return self.rightNow


def test_a_kept_head_is_kept_with_what_it_shows_however_the_clock_moves() -> None:
    racing = Moving(0.3)  # past seconds
    service = Service(racing)
    service.put(b'{"v": 1}')
    racing.moving = True
    request = REQUESTS["raw"]
    for _ in range(6):
        answer = service.known(request)
        head = dict(
            line.split(b": ", 1) for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
        )
        known = service.site.known[request].memo
        if known.entry() is not None:
            assert known.head.endswith(b"\r\n")
            shown = dict(line.split(b": ", 1) for line in known.head.split(b"\r\n")[1:-1])
            assert (known.date, b"%d" % known.age) == (shown[b"Date"], shown[b"Age"])
            assert shown[b"Cache-Status"].endswith(b"ttl=%d" % known.ttl)
        assert head[b"Content-Length"] == b"8"


def test_a_hit_answered_at_once_is_dated_as_of_the_time_its_age_is() -> None:
    # Its Date is as of when its answering began, as its Age and Cache-Status are,
    # however late the clock reads by the time the head is written.
    racing = Moving(0.3)  # past seconds
    service = Service(racing)
    service.put(b'{"v": 1}')
    racing.moving = True
    for _ in range(5):
        head, _, body = service.known(REQUESTS["json"]).partition(b"\r\n\r\n")
        shown = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        answer = json.loads(body)
        now = answer["fetched_at"] + answer["age"]
        assert shown[b"Date"] == http.datetimeToString(int(now))  # (now is never near a second)


def test_a_hit_read_past_the_near_cache_never_shows_a_negative_ttl() -> None:
    # Read from the store (not at hand), a hit is decided fresh, then rendered when the
    # clock has moved on: at whatever moment its freshness ends, it says ttl=0 at least.
    hits = 0
    for step in range(120):
        ticking = Moving(0.01)
        service = Service(ticking, near=True)
        service.put(b'{"v": 1}')  # fresh for 10 s
        ticking.advance(9.305 + step * 0.01)  # (never a read at its end)
        ticking.moving = True
        head, _, body = service.first_time(REQUESTS["json"]).partition(b"\r\n\r\n")
        if json.loads(body)["status"] == "hit":
            hits += 1
            assert b"Cache-Status: refresherd; hit; ttl=-" not in head
    assert 0 < hits < 120
