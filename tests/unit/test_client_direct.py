"""
Direct reads (docs/clients.md, "Direct reads"): the client answers a read of
the store itself only when the service would answer the same hit, with no
refresh to start.  A table of entries, purges and times is run through both the
service's lookup (a L{Refresher} on a memory store, on task.Clock) and the
client's decision (L{direct.hit_of}) on the same bytes, at the same now, with
the same random number.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import pytest
from twisted.internet import task

from refresherd import errors
from refresherd.client import AsyncClient, BatchTooLarge, Client, Raw, direct
from refresherd.client.calls import Request, Response
from refresherd.client.http11 import Caseless
from refresherd.config import JobConfig
from refresherd.core.jobs import Job
from refresherd.core.patterns import compile_pattern
from refresherd.core.refresher import Answer, Refresher
from refresherd.entry import Entry, decode, encode, make_etag
from refresherd.http.answers import answer_body, cache_status
from refresherd.http.public import layout
from refresherd.keys import generation_key
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher
from tests.deferreds import result

NOW = 1_000_000.0
ARGS = {"id": "7"}


def job_config(**settings: Any) -> JobConfig:
    settings.setdefault("fresh", 60.0)
    settings.setdefault("stale", 30.0)
    settings.setdefault("tags", ("obj:{id}", "all"))
    return JobConfig(name="j", fetch="python", args=("id",), callable="x:y", **settings)


def the_layout(*configs: JobConfig, store: str = "redis") -> direct.Layout:
    """The layout as the service serves it, through JSON, as the client reads it."""
    jobs = {config.name: Job(config, FakeFetcher()) for config in configs}
    document = json.loads(json.dumps(layout("rfd", jobs, store, 100)))
    return direct.parse_layout(document, f'"{document["generation"]}"')


def entry(**changes: Any) -> Entry:
    """A fresh JSON value of j with ARGS fetched 10 s before NOW (fresh 60, stale 30)."""
    body = changes.pop("body", b'{"n": 7}')
    fetched_at = changes.pop("fetched_at", NOW - 10)
    fields: dict[str, Any] = {
        "body": body,
        "content_type": "application/json",
        "fetched_at": fetched_at,
        "fresh_until": fetched_at + 60,
        "stale_until": fetched_at + 90,
        "error_until": fetched_at + 60,
        "duration": 0.5,
        "job": "j",
        "args": dict(ARGS),
        "tags": ("obj:7", "all"),
        "etag": make_etag(body or b"", fetched_at),
    }
    fields.update(changes)
    return Entry(**fields)


@attrs.frozen
class Case:
    name: str
    entry: Entry | None
    purges: tuple[tuple[str, str, bool], ...] = ()
    """(kind, name, hard) of each purge done after the entry was written."""
    before: tuple[tuple[str, str, bool], ...] = ()
    """Purges done before its fetch began: the entry carries their marks."""
    rand: float = 0.999999
    config: Mapping[str, Any] = attrs.field(factory=dict)
    local: bool = False
    """Whether the client answers it itself."""


CASES = [
    Case("fresh", entry(), local=True),
    Case("fresh text", entry(body=b"caf\xc3\xa9", content_type="text/plain"), local=True),
    Case("fresh bytes", entry(body=b"\xff\x00", content_type="image/png"), local=True),
    Case(
        "fresh, its job purged before its fetch", entry(), before=(("job", "j", True),), local=True
    ),
    Case(
        "fresh, a tag soft-purged before its fetch",
        entry(),
        before=(("tag", "all", False),),
        local=True,
    ),
    Case(
        "fresh, early refresh off",
        entry(fetched_at=NOW - 59.9),
        rand=1e-12,
        config={"early_refresh": 0},
        local=True,
    ),
    Case("fresh, early refresh due", entry(fetched_at=NOW - 59.9), rand=1e-12),
    Case("stale", entry(fetched_at=NOW - 70)),
    Case("past stale", entry(fetched_at=NOW - 100)),
    Case("absent", None),
    Case(
        "fresh, refreshes failing", entry(failures=2, last_error="x", retry_at=NOW + 5), local=True
    ),
    Case(
        "a failure remembered",
        entry(
            body=None,
            fetched_at=NOW,
            fresh_until=NOW,
            stale_until=NOW,
            error_until=NOW,
            retry_at=NOW + 5,
            failures=1,
            last_error="boom",
            etag="",
        ),
    ),
    Case("job purged", entry(), purges=(("job", "j", True),)),
    Case("job soft-purged", entry(), purges=(("job", "j", False),)),
    Case("tag purged", entry(), purges=(("tag", "obj:7", True),)),
    Case("tag soft-purged", entry(), purges=(("tag", "all", False),)),
    Case("another tag purged", entry(), purges=(("tag", "obj:8", True),), local=True),
    Case("another job purged", entry(), purges=(("job", "k", True),), local=True),
    Case("tags of its origin's", entry(tags=("obj:7", "all", "origin:1"))),
    Case("written for other tags", entry(tags=("obj:7",))),
]


def marks_of(read: direct.Read, tokens: Mapping[str, str]) -> tuple[str, str]:
    return read.generation_keys.marks(tokens)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_client_answers_only_what_the_service_answers_as_a_plain_hit(case: Case) -> None:
    clock = task.Clock()
    clock.advance(NOW)
    store = MemoryStore(clock)
    config = job_config(**case.config)
    refresher = Refresher(
        store,
        {"j": Job(config, FakeFetcher())},
        clock,
        "rfd",
        metrics_for(["j"]),
        random=lambda: case.rand,
    )
    read = direct.read_of(the_layout(config), "j", ARGS)
    assert read is not None
    purge = lambda kind, name, hard: result(  # noqa: E731
        store.new_purge_token(generation_key("rfd", kind, name, hard), 3600)
    )
    for done in case.before:
        purge(*done)
    stored = case.entry
    if stored is not None:
        if case.before:
            tokens = result(store.get_purge_tokens(read.generation_keys.all))
            stored = attrs.evolve(stored, marks=marks_of(read, tokens))
        result(store.put(read.key, stored, 3600))
    for done in case.purges:
        purge(*done)
    tokens = result(store.get_purge_tokens(read.generation_keys.all))
    values = [None if stored is None else encode(stored)] + [
        None if key not in tokens else tokens[key].encode("ascii")
        for key in read.generation_keys.all
    ]

    mine = direct.hit_of(read, values, clock.seconds(), case.rand)
    raw = direct.raw_of(read, values, clock.seconds(), case.rand)

    target = refresher.target("j", ARGS)
    assert target.key == read.key
    try:
        answering = refresher.lookup(target)
    except errors.RefresherdError:  # a failure remembered: 502
        answering = None
    theirs = answering if isinstance(answering, Answer) else None  # else waiting for a fetch
    plain_hit = theirs is not None and theirs.status == "hit" and not refresher.flights.running
    assert (mine is not None) == case.local and (raw is not None) == case.local
    if mine is not None:
        assert plain_hit and theirs is not None and theirs.entry is not None
        assert mine == json.loads(answer_body(theirs, clock.seconds()))
        # As GET /v1/jobs/j/raw answers it: its body, Content-Type, ETag and Cache-Status.
        status = cache_status(theirs, clock.seconds()).decode()
        assert raw == Raw(
            theirs.entry.body or b"", theirs.entry.content_type, 200, theirs.entry.etag, status
        )


def test_the_layout_names_what_reads_need_and_its_generation_changes_with_it() -> None:
    one, two = the_layout(job_config()), the_layout(job_config(version=2))
    assert one.namespace == "rfd" and one.etag == f'"{one.generation}"'
    assert one.jobs["j"] == direct.DirectJob(
        "j", 1, ("id",), ("obj:{id}", "all"), 1.0, one.jobs["j"].max_entry_bytes
    )
    assert two.generation != one.generation
    assert direct.read_of(two, "j", ARGS).key == "rfd:j:v2:id=7"  # type: ignore[union-attr]


@pytest.mark.parametrize("store", ["memory", "memcached"])
def test_a_store_that_is_not_redis_is_never_read_directly(store: str) -> None:
    assert direct.read_of(the_layout(job_config(), store=store), "j", ARGS) is None


def test_a_job_with_argument_patterns_is_left_to_the_service() -> None:
    config = job_config()
    patterned = attrs.evolve(config, arg_patterns={"id": compile_pattern("[0-9]+")})
    assert direct.read_of(the_layout(patterned), "j", ARGS) is None


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"id": "1", "x": "2"},
        {"x": "1"},
        {"id": ""},
        {"id": "."},
        {"id": "a/b"},
        {"id": "a\\b"},
        {"id": "x" * 1025},
        {"id": "\n"},
    ],
)
def test_arguments_the_service_may_refuse_are_left_to_it(args: dict[str, str]) -> None:
    assert direct.read_of(the_layout(job_config()), "j", args) is None


def test_an_unknown_job_is_left_to_the_service() -> None:
    assert direct.read_of(the_layout(job_config()), "nope", ARGS) is None


@pytest.mark.parametrize(
    "values",
    [
        [b"not an entry", None, None, None, None, None, None],
        [b'{"format": 99}\n', None, None, None, None, None, None],
        [encode(entry(content_type="application/json", body=b"{nope")), *[None] * 6],
        [encode(entry())],
        [encode(entry()).decode(), None, None, None, None, None, None],
        [encode(entry()), "token", None, None, None, None, None],
    ],
)
def test_what_it_cannot_read_is_left_to_the_service(values: list[Any]) -> None:
    read = direct.read_of(the_layout(job_config()), "j", ARGS)
    assert read is not None
    assert direct.hit_of(read, values, NOW, 0.5) is None
    assert direct.raw_of(read, values, NOW, 0.5) is None


def test_the_same_bytes_read_again_are_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []

    def counting(data: bytes) -> Entry:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(direct, "decode", counting)
    read = direct.read_of(the_layout(job_config()), "j", ARGS)
    assert read is not None
    one, two = encode(entry()), encode(entry(body=b'{"n": 8}'))
    big = encode(entry(body=b"[" + b"0," * direct.MEMO_BYTES + b"0]"))
    for data in (one, one, two, two, one, big, big):
        assert direct.hit_of(read, [data, *[None] * 6], NOW, 0.5) is not None
    assert decoded == [one, two, one, big, big]  # a large entry is not remembered
    # A purge mark or a time that changed is read as ever.
    assert direct.hit_of(read, [one, *[None] * 6], NOW + 60, 0.5) is None
    assert direct.hit_of(read, [one, b"0" * 32, *[None] * 5], NOW, 0.5) is None


def test_a_batch_reads_each_key_once_and_answers_each_lookup_from_its_own_keys() -> None:
    state = direct.DirectReads()
    document = layout("rfd", {"j": Job(job_config(), FakeFetcher())}, "redis", 100)
    state.layout_answered(200, json.dumps(document).encode(), None)
    lookups = [("j", {"id": "7"}), ("j", {"id": "8"}), ("nope", {}), ("j", {"id": "7"})]
    batch = state.batch(lookups, 1.0)
    assert batch is not None
    seven, eight = batch.reads[0], batch.reads[1]
    assert seven is not None and eight is not None and batch.reads[2] is None
    # The generation keys of the job and of tag "all" once: 7 keys, and 3 of the second.
    assert batch.keys == tuple(dict.fromkeys([*seven.keys, *eight.keys]))
    assert len(seven.keys) == 7 and len(batch.keys) == 10
    found = {seven.key: encode(entry())}
    values = [found.get(key) for key in batch.keys]
    answers = batch.answers(values, NOW, lambda: 0.5, direct.hit_of)
    assert [None if a is None else a["value"] for a in answers] == [{"n": 7}, None, None, {"n": 7}]
    assert batch.answers(values[:-1], NOW, lambda: 0.5, direct.hit_of) == [None] * 4
    assert state.batch([("nope", {})], 1.0) is None  # nothing to read: no MGET
    assert direct.merged([1, None, 2, None], iter("ab")) == [1, "a", 2, "b"]


def test_an_entry_over_the_jobs_largest_is_left_to_the_service() -> None:
    # The largest entry of a job: its max_value_bytes and a metadata line (1 MiB at most).
    big = b"[" + b"0," * 600_000 + b"0]"
    values: list[bytes | None] = [encode(entry(body=big))] + [None] * 6
    small = direct.read_of(the_layout(job_config(max_value_bytes=4)), "j", ARGS)
    large = direct.read_of(the_layout(job_config(max_value_bytes=len(big))), "j", ARGS)
    assert small is not None and large is not None
    assert direct.hit_of(small, values, NOW, 0.5) is None
    assert direct.hit_of(large, values, NOW, 0.5) is not None


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"format": 2},
        {"format": 1, "namespace": "rfd", "generation": "g"},
        {"format": 1, "namespace": "rfd", "generation": "g", "jobs": {"j": []}},
        {"format": 1, "namespace": "rfd", "generation": "g", "jobs": {"j": {"version": "1"}}},
        {
            "format": 1,
            "namespace": "rfd",
            "generation": "g",
            "jobs": {"j": {"version": 1, "args": "id"}},
        },
        {"format": 1, "namespace": 7, "generation": "g", "jobs": {}},
        {"format": 1, "namespace": "rfd", "generation": "g", "jobs": {}, "max_batch": 0},
        {"format": 1, "namespace": "rfd", "generation": "g", "jobs": {}, "max_batch": "5"},
        {"format": 1, "namespace": "rfd", "generation": "g", "jobs": {}, "max_batch": True},
    ],
)
def test_a_layout_it_does_not_read_is_refused(document: object) -> None:
    with pytest.raises(direct.BadLayout):
        direct.parse_layout(document, None)


def test_a_batch_larger_than_the_service_takes_is_refused_as_the_service_would() -> None:
    jobs = {"j": Job(job_config(), FakeFetcher())}
    document = json.loads(json.dumps(layout("rfd", jobs, "redis", 3)))
    state = direct.DirectReads(direct.parse_layout(document, None))
    lookups = [("j", {"id": str(n)}) for n in range(4)]
    with pytest.raises(BatchTooLarge) as refused:
        state.batch(lookups, 0.0)  # hits or not, as the service refuses it
    assert (refused.value.status, refused.value.code) == (413, "batch_too_large")
    assert str(refused.value) == "batch_too_large: a batch may hold at most 3 items"
    assert state.batch(lookups[:3], 0.0) is not None
    del document["max_batch"]  # a service that does not say: the service decides
    state = direct.DirectReads(direct.parse_layout(document, None))
    assert state.batch(lookups, 0.0) is not None


# -- the sync client ------------------------------------------------------------------------

SERVICE_HIT = {"job": "j", "key": "rfd:j:v1:id=7", "status": "hit", "value": "from the service"}
SERVICE_RAW = Raw(b"from the service", "text/plain", 200)


@attrs.define
class FakeRedis:
    """What C{MGET} finds, or the error it raises; the keys of each call."""

    found: dict[str, bytes] = attrs.field(factory=dict)
    error: Exception | None = None
    calls: list[list[str]] = attrs.field(factory=list)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self.calls.append(list(keys))
        if self.error is not None:
            raise self.error
        return [self.found.get(key) for key in keys]

    def close(self) -> None:
        pass


@attrs.define
class Service:
    """The service as a mock transport: its layout (with ETag and 304) and SERVICE_HIT."""

    config: JobConfig = attrs.field(factory=job_config)
    layout_status: int = 200
    paths: list[str] = attrs.field(factory=list)
    conditions: list[str | None] = attrs.field(factory=list)
    fetched: list[list[Any]] = attrs.field(factory=list)
    """The items of each C{POST /v1/fetch}."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/v1/fetch":
            items = json.loads(request.read())["items"]
            self.fetched.append([(item["job"], item["args"]) for item in items])
            return httpx.Response(200, json={"items": [SERVICE_HIT] * len(items)})
        if request.url.path.endswith("/raw"):
            headers = {"Content-Type": SERVICE_RAW.content_type}
            return httpx.Response(200, content=SERVICE_RAW.body, headers=headers)
        if request.url.path != "/v1/layout":
            return httpx.Response(200, json=SERVICE_HIT)
        self.conditions.append(request.headers.get("If-None-Match"))
        if self.layout_status != 200:
            return httpx.Response(self.layout_status, json={"error": "x", "message": "x"})
        document = layout("rfd", {"j": Job(self.config, FakeFetcher())}, "redis", 100)
        etag = f'"{document["generation"]}"'
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(200, json=document, headers={"ETag": etag})


def direct_client(service: Service, redis: FakeRedis) -> tuple[Client, list[float]]:
    """A client with direct reads on C{redis}, its monotonic clock a list to move."""
    now = [100.0]
    client = Client(
        transport=httpx.MockTransport(service),
        redis_url="redis://127.0.0.1:1/0",
        clock=lambda: now[0],
    )
    assert client._direct is not None
    client._direct._redis = redis  # type: ignore[assignment]
    client._direct._now = lambda: NOW
    client._direct._random = lambda: 0.999999
    return client, now


def test_a_fresh_hit_is_answered_from_redis_and_the_layout_rechecked_every_5_seconds() -> None:
    service, redis = Service(), FakeRedis({"rfd:j:v1:id=7": encode(entry())})
    client, now = direct_client(service, redis)
    first = client.get("j", id="7")
    assert first["status"] == "hit" and first["value"] == {"n": 7}
    assert client.value("j", id=7) == {"n": 7}
    assert service.paths == ["/v1/layout"]
    names = [("job", "j"), ("tag", "obj:7"), ("tag", "all")]
    generations = [generation_key("rfd", k, n, hard) for hard in (True, False) for k, n in names]
    assert redis.calls[0] == ["rfd:j:v1:id=7", *generations]
    now[0] += direct.LAYOUT_RECHECK
    client.get("j", id="7")
    assert service.paths == ["/v1/layout", "/v1/layout"]
    layout_now = client._direct.state.layout  # type: ignore[union-attr]
    assert layout_now is not None
    assert service.conditions == [None, f'"{layout_now.generation}"']  # answered 304


def test_anything_but_a_fresh_hit_goes_to_the_service() -> None:
    service, redis = Service(), FakeRedis({"rfd:j:v1:id=7": encode(entry(fetched_at=NOW - 70))})
    client, _ = direct_client(service, redis)
    assert client.get("j", id="7") == SERVICE_HIT
    assert client.get("j", id="8") == SERVICE_HIT
    assert service.paths == ["/v1/layout", "/v1/jobs/j", "/v1/jobs/j"]


def test_a_version_bump_is_read_after_the_recheck() -> None:
    service = Service()
    redis = FakeRedis({"rfd:j:v1:id=7": encode(entry()), "rfd:j:v2:id=7": encode(entry(body=b"2"))})
    client, now = direct_client(service, redis)
    assert client.value("j", id="7") == {"n": 7}
    service.config = job_config(version=2)
    assert client.value("j", id="7") == {"n": 7}  # not rechecked yet
    now[0] += direct.LAYOUT_RECHECK
    assert client.value("j", id="7") == 2


def test_redis_failing_sends_reads_to_the_service_and_is_not_retried_for_5_seconds() -> None:
    service = Service()
    redis = FakeRedis({"rfd:j:v1:id=7": encode(entry())}, error=OSError("refused"))
    client, now = direct_client(service, redis)
    assert client.get("j", id="7") == SERVICE_HIT
    assert client.get("j", id="7") == SERVICE_HIT
    assert len(redis.calls) == 1
    redis.error = None
    now[0] += direct.REDIS_BACKOFF
    assert client.get("j", id="7")["value"] == {"n": 7}
    assert len(redis.calls) == 2


def test_without_a_layout_every_read_goes_to_the_service() -> None:
    service, redis = Service(layout_status=503), FakeRedis({"rfd:j:v1:id=7": encode(entry())})
    client, now = direct_client(service, redis)
    assert client.get("j", id="7") == SERVICE_HIT
    assert client.get("j", id="7") == SERVICE_HIT
    assert redis.calls == []
    assert service.paths == ["/v1/layout", "/v1/jobs/j", "/v1/jobs/j"]
    service.layout_status = 200
    now[0] += direct.LAYOUT_RECHECK
    assert client.get("j", id="7")["value"] == {"n": 7}


def test_a_fresh_raw_value_is_answered_from_redis() -> None:
    service, redis = Service(), FakeRedis({"rfd:j:v1:id=7": encode(entry())})
    client, _ = direct_client(service, redis)
    raw = client.raw("j", id="7")
    etag = make_etag(b'{"n": 7}', NOW - 10)
    assert raw == Raw(b'{"n": 7}', "application/json", 200, etag, "refresherd; hit; ttl=50")
    assert client.raw("j", id="8") == SERVICE_RAW
    assert service.paths == ["/v1/layout", "/v1/jobs/j/raw"]


def test_a_batch_reads_its_fresh_hits_in_one_mget_and_asks_the_service_for_the_rest() -> None:
    service = Service()
    redis = FakeRedis(
        {"rfd:j:v1:id=7": encode(entry()), "rfd:j:v1:id=9": encode(entry(fetched_at=NOW - 70))}
    )
    client, now = direct_client(service, redis)
    items: list[Any] = [
        ("j", {"id": 7}),
        ("j", {"id": "9"}),
        "other",
        {"job": "j", "args": {"id": "7"}},
    ]
    answers: list[Any] = client.get_many(items)
    assert [answer["value"] for answer in answers] == [
        {"n": 7},
        "from the service",
        "from the service",
        {"n": 7},
    ]
    assert len(redis.calls) == 1 and service.fetched == [[("j", {"id": "9"}), ("other", {})]]
    assert [a["value"] for a in client.get_many([("j", {"id": "7"})])] == [{"n": 7}]  # type: ignore[index]
    assert len(service.fetched) == 1  # all read in Redis: no request
    redis.error = OSError("refused")
    assert client.get_many([("j", {"id": "7"})]) == [SERVICE_HIT]
    assert service.fetched[-1] == [("j", {"id": "7"})]
    assert client.get_many([]) == []


def test_direct_reads_need_redis_py_and_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"refresherd\[redis-client\]"):
        Client(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ImportError, match=r"refresherd\[redis-client\]"):
        AsyncClient(redis_url="redis://127.0.0.1:1/0")


def test_the_state_asks_for_the_layout_every_5_seconds_with_its_etag() -> None:
    state = direct.DirectReads()
    assert state.layout_due(10.0) == {}
    assert state.layout_due(14.9) is None
    document = layout("rfd", {"j": Job(job_config(), FakeFetcher())}, "redis", 100)
    state.layout_answered(200, json.dumps(document).encode(), '"e1"')
    read = state.read("j", ARGS, 11.0)
    assert read is not None and state.read("j", dict(ARGS), 11.0) is read  # remembered
    assert state.layout_due(15.0) == {"If-None-Match": '"e1"'}
    state.layout_answered(304, b"", '"e1"')
    assert state.layout is not None and state.layout.etag == '"e1"'
    with pytest.raises(direct.BadLayout):
        state.layout_answered(200, b'{"format": 2}', None)
    assert state.layout is None and state.read("j", ARGS, 16.0) is None


def test_the_state_reads_no_redis_for_5_seconds_after_it_failed() -> None:
    state = direct.DirectReads()
    document = layout("rfd", {"j": Job(job_config(), FakeFetcher())}, "redis", 100)
    state.layout_answered(200, json.dumps(document).encode(), None)
    state.redis_failed(20.0)
    assert state.read("j", ARGS, 24.9) is None
    assert state.read("j", ARGS, 25.0) is not None


# -- the async client -----------------------------------------------------------------------


@attrs.define
class AsyncFakeRedis(FakeRedis):
    closed: bool = False

    async def mget(self, keys: list[str]) -> list[bytes | None]:  # type: ignore[override]
        return FakeRedis.mget(self, keys)

    async def aclose(self) -> None:
        self.closed = True


@attrs.define
class AsyncService:
    """L{Service} as an L{AsyncClient} transport."""

    service: Service

    async def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response:
        url = "http://127.0.0.1:8080" + request.target
        answered = self.service(
            httpx.Request(request.method, url, headers=dict(request.headers), content=request.body)
        )
        return Response(answered.status_code, "", Caseless(dict(answered.headers)), answered.read())

    async def aclose(self) -> None:
        pass


def test_the_async_client_reads_fresh_hits_in_redis_and_the_rest_from_the_service() -> None:
    service = Service()
    redis = AsyncFakeRedis({"rfd:j:v1:id=7": encode(entry())})
    now = [100.0]

    async def reads() -> list[Any]:
        client = AsyncClient(
            transport=AsyncService(service), redis_url="redis://127.0.0.1:1/0", clock=lambda: now[0]
        )
        assert client._direct is not None
        client._direct._by_loop[asyncio.get_running_loop()] = redis
        client._direct._now = lambda: NOW
        client._direct._random = lambda: 0.999999
        answers = [await client.get("j", id="7"), await client.value("j", id="7")]
        answers.append(await client.get("j", id="8"))  # absent: the service
        redis.error = OSError("refused")
        answers.append(await client.get("j", id="7"))  # Redis down: the service
        answers.append(await client.get("j", id="7"))  # not retried for 5 s
        now[0] += direct.REDIS_BACKOFF
        redis.error = None
        answers.append(await client.value("j", id="7"))
        answers.append(await client.raw("j", id="7"))
        answers.append(await client.get_many([("j", {"id": "7"}), ("j", {"id": "8"})]))
        await client.aclose()
        return answers

    first, value, absent, down, still_down, back, raw, many = asyncio.run(reads())
    assert first["status"] == "hit" and value == back == {"n": 7}
    assert absent == down == still_down == SERVICE_HIT
    assert raw.body == b'{"n": 7}' and raw.cache_status == "refresherd; hit; ttl=50"
    assert [answer["value"] for answer in many] == [{"n": 7}, "from the service"]
    assert service.fetched == [[("j", {"id": "8"})]]
    assert len(redis.calls) == 7 and redis.closed
    assert service.paths == ["/v1/layout"] + ["/v1/jobs/j"] * 3 + ["/v1/layout", "/v1/fetch"]
