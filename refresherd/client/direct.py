"""
Direct reads (docs/clients.md, "Direct reads"), without I/O: what a client
configured with the shared Redis's URL reads there, and whether what it read
is a fresh hit it may answer itself.

The keys and the decision are the service's own code (L{refresherd.keys},
L{refresherd.core.marks}, L{refresherd.core.policy}, L{refresherd.entry}),
none of which imports Twisted.  Anything but a fresh hit with no early refresh
due is left to the service: stale, absent, purged (hard or soft), due for an
early refresh, a failure, unreadable, tagged by its origin beyond its job's
tags, or a job or arguments the client is not sure of.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from refresherd.client.answers import Raw
from refresherd.client.errors import BatchTooLarge
from refresherd.core import policy
from refresherd.core.marks import GenerationKeys, build_generation_keys
from refresherd.core.templates import render_tags
from refresherd.entry import (
    Entry,
    EntryFormatError,
    decode,
    entry_problem,
    is_json_content_type,
    largest_entry,
    parse_json,
)
from refresherd.keys import entry_key

LAYOUT_FORMAT = 1
"""The version of the C{GET /v1/layout} document this client reads."""
LAYOUT_RECHECK = 5.0
"""Seconds a layout is used before it is asked for again (with its ETag: a 304 when unchanged)."""
REDIS_BACKOFF = 5.0
"""Seconds without direct reads after Redis failed: every read goes to the service meanwhile."""
MAX_ARG_BYTES = 1024
MAX_READS = 1024
"""Lookups whose L{Read} a layout remembers (all forgotten when more)."""
MEMO_BYTES = 16 * 1024
"""The largest entry whose decoding a lookup remembers (L{Read.last})."""
_DIRECT_STORES = ("redis", "redis+sentinel")


class BadLayout(ValueError):
    """A C{/v1/layout} answer this client does not read."""


@attrs.frozen
class DirectJob:
    """What a client needs of one job to read its hits directly."""

    name: str
    version: int
    args: tuple[str, ...]
    tags: tuple[str, ...]
    early_refresh: float
    max_entry_bytes: int


@attrs.frozen
class Layout:
    """The layout of the service's store (C{GET /v1/layout}), checked."""

    namespace: str
    generation: str
    etag: str | None
    jobs: Mapping[str, DirectJob]
    """The jobs that may be read directly (none when the store is not Redis)."""
    max_batch: int | None = None
    """The most items of a batch the service takes (None: a service that does not say)."""
    reads: dict[tuple[str, tuple[tuple[str, str], ...]], Read | None] = attrs.field(
        factory=dict, eq=False, repr=False
    )
    """The L{Read} of each lookup made on this layout, remembered (at most L{MAX_READS})."""


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadLayout("a job's args and tags are lists of strings")
    return tuple(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadLayout("a job's numbers are numbers")
    return float(value)


def parse_layout(document: object, etag: str | None) -> Layout:
    """The L{Layout} of a C{/v1/layout} answer; L{BadLayout} if it is not one this client reads."""
    if not isinstance(document, dict) or document.get("format") != LAYOUT_FORMAT:
        raise BadLayout("not a layout of a format this client reads")
    namespace, generation, jobs = (document.get(k) for k in ("namespace", "generation", "jobs"))
    if not isinstance(namespace, str) or not isinstance(generation, str):
        raise BadLayout("the layout has no namespace or generation")
    if not isinstance(jobs, dict):
        raise BadLayout("the layout has no jobs")
    direct: dict[str, DirectJob] = {}
    for name, job in jobs.items():
        if not isinstance(job, dict):
            raise BadLayout("a job of the layout is not an object")
        version = job.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadLayout("a job's version is an integer")
        described = DirectJob(
            name=name,
            version=version,
            args=_strings(job.get("args")),
            tags=_strings(job.get("tags")),
            early_refresh=_number(job.get("early_refresh")),
            max_entry_bytes=largest_entry(int(_number(job.get("max_value_bytes")))),
        )
        if job.get("direct") is True:
            direct[name] = described
    if document.get("store") not in _DIRECT_STORES:
        direct = {}
    max_batch = document.get("max_batch")
    if max_batch is not None and (
        isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
    ):
        raise BadLayout("the layout's max_batch is a positive integer")
    return Layout(namespace, generation, etag, direct, max_batch)


@attrs.frozen
class Read:
    """What to read for one lookup: the entry's key, then its generation keys, in one C{MGET}."""

    job: DirectJob
    key: str
    tags: tuple[str, ...]
    generation_keys: GenerationKeys
    keys: tuple[str, ...] = attrs.field(init=False)
    last: list[tuple[bytes, Entry] | None] = attrs.field(
        init=False, factory=lambda: [None], eq=False, repr=False
    )
    """
    The bytes last read at C{key} and their entry, decoded and checked (when
    at most L{MEMO_BYTES}): the same bytes read again are not decoded again.
    """

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "keys", (self.key, *self.generation_keys.all))


def _plain(value: str) -> bool:
    """
    A value the service takes for any job: not too long, and none of those the
    URL checks may refuse (empty, C{.}, C{..}, holding C{/} or C{\\}).
    """
    return (
        value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and len(value.encode("utf-8", "surrogatepass")) <= MAX_ARG_BYTES
        and value.isprintable()
    )


def read_of(layout: Layout, job: str, args: Mapping[str, str]) -> Read | None:
    """
    What to read for C{job} with C{args}; None when the service must answer
    (a job it may not read directly, arguments it is not sure the service takes).
    """
    described = layout.jobs.get(job)
    if described is None or set(args) != set(described.args):
        return None
    if not all(_plain(value) for value in args.values()):
        return None
    key = entry_key(layout.namespace, job, described.version, args)
    tags = render_tags(described.tags, args)
    return Read(described, key, tags, build_generation_keys(layout.namespace, job, tags))


def _tokens(keys: Sequence[str], values: Sequence[bytes | None]) -> dict[str, str]:
    """The generation tokens of C{keys} from an C{MGET} of them (as the service reads them)."""
    return {
        key: value.decode("ascii", "replace")
        for key, value in zip(keys, values, strict=True)
        if value is not None
    }


def _fresh_entry(read: Read, values: Sequence[Any], now: float, rand: float) -> Entry | None:
    """
    The entry an C{MGET} of C{read.keys} found at C{now}, when the service
    would answer it as a fresh hit with no early refresh due (C{rand} as the
    service's random number); else None.  A JSON body is not checked here:
    its answer parses it.
    """
    if len(values) != len(read.keys) or not all(v is None or isinstance(v, bytes) for v in values):
        return None  # not what an MGET of bytes answers (decode_responses in the URL)
    data = values[0]
    if data is None or len(data) > read.job.max_entry_bytes:
        return None
    last = read.last[0]
    if last is not None and last[0] == data:
        entry = last[1]  # the same bytes as last time: checked then
    else:
        try:
            entry = decode(data)
        except EntryFormatError:
            return None
        if entry_problem(entry, body_checked=True) is not None or entry.tags != read.tags:
            return None  # unreadable, or tags of an origin's: the service reads their marks
        if len(data) <= MEMO_BYTES:
            read.last[0] = (data, entry)
    current = read.generation_keys.marks(_tokens(read.generation_keys.all, values[1:]))
    if entry.marks != current:
        return None  # purged, hard or soft
    if policy.decide(now, entry, read.job.early_refresh, rand) is not policy.HIT:
        return None
    return entry


def hit_of(read: Read, values: Sequence[Any], now: float, rand: float) -> Any:
    """
    The answer (as C{GET /v1/jobs/{job}} gives it, status C{hit}) of what an
    C{MGET} of C{read.keys} found at C{now}, when it is a fresh hit with no
    early refresh due (C{rand} as the service's random number); else None.
    """
    entry = _fresh_entry(read, values, now, rand)
    if entry is None:
        return None
    answer: dict[str, Any] = {
        "job": read.job.name,
        "key": read.key,
        "status": "hit",
        "content_type": entry.content_type,
        "fetched_at": entry.fetched_at,
        "fresh_until": entry.fresh_until,
        "stale_until": entry.stale_until,
        "age": round(max(0.0, now - entry.fetched_at), 3),
    }
    body = entry.body or b""
    if is_json_content_type(entry.content_type):
        try:  # the check entry_problem skipped, parsed once
            answer["value"] = parse_json(body)
        except ValueError:
            return None  # the content type is JSON but the body is not: unreadable
    else:
        try:
            answer["value"] = body.decode("utf-8")
        except UnicodeDecodeError:
            answer["value_b64"] = base64.b64encode(body).decode("ascii")
    return answer


def raw_of(read: Read, values: Sequence[Any], now: float, rand: float) -> Raw | None:
    """
    As L{hit_of}, the answer as C{GET /v1/jobs/{job}/raw} gives it: the
    stored body with its content type, C{ETag} and C{Cache-Status}.
    """
    entry = _fresh_entry(read, values, now, rand)
    if entry is None:
        return None
    body = entry.body or b""
    if is_json_content_type(entry.content_type):
        try:  # the check entry_problem skipped
            parse_json(body)
        except ValueError:
            return None
    ttl = math.floor(entry.fresh_until - now)
    return Raw(body, entry.content_type, 200, entry.etag, f"refresherd; hit; ttl={ttl}")


AnswerOf = Callable[[Read, Sequence[Any], float, float], Any]
"""L{hit_of} or L{raw_of}: the answer of a fresh hit, or None."""


@attrs.frozen
class Batch:
    """The reads of many lookups in one C{MGET}: C{keys}, each key once, in order."""

    reads: tuple[Read | None, ...]
    keys: tuple[str, ...]

    def answers(
        self,
        values: Sequence[Any],
        now: float,
        random: Callable[[], float],
        answer_of: AnswerOf,
    ) -> list[Any]:
        """
        Each lookup's answer (by C{answer_of}, a random number drawn for each)
        from what the C{MGET} of C{keys} found; None where the service must answer.
        """
        if not isinstance(values, list | tuple) or len(values) != len(self.keys):
            return [None] * len(self.reads)
        found = dict(zip(self.keys, values, strict=True))
        return [
            None if read is None else answer_of(read, [found[k] for k in read.keys], now, random())
            for read in self.reads
        ]


def merged(hits: Sequence[Any], asked: Iterable[Any]) -> list[Any]:
    """The answers of a batch: its hits read directly, the service's C{asked} in the gaps."""
    rest = iter(asked)
    return [next(rest) if hit is None else hit for hit in hits]


@attrs.define
class DirectReads:
    """
    The state of a client's direct reads, without I/O (shared by a sync and an
    async client): the layout, asked of the service at most every
    L{LAYOUT_RECHECK} seconds (with its ETag), and no read of Redis for
    L{REDIS_BACKOFF} seconds after one failed.  C{now} is a monotonic clock.
    """

    layout: Layout | None = None
    _layout_due: float = 0.0
    _redis_due: float = 0.0

    def layout_due(self, now: float) -> dict[str, str] | None:
        """
        The headers of a C{GET /v1/layout} to send now, or None when the
        layout is recent enough (or was asked for less than L{LAYOUT_RECHECK}
        ago).  Its answer is then given to L{layout_answered} or
        L{layout_failed}.
        """
        if now < self._layout_due:
            return None
        self._layout_due = now + LAYOUT_RECHECK
        etag = None if self.layout is None else self.layout.etag
        return {} if etag is None else {"If-None-Match": etag}

    def layout_answered(self, status: int, content: bytes, etag: str | None) -> None:
        """The service answered C{GET /v1/layout}: a 304 keeps the layout, a 200 replaces it."""
        if status == 304 and self.layout is not None:
            return
        try:
            self.layout = parse_layout(json.loads(content), etag)
        except ValueError:  # BadLayout, or not JSON
            self.layout = None
            raise

    def layout_failed(self) -> None:
        """No layout now: every read goes to the service until the next one."""
        self.layout = None

    def read(self, job: str, args: Mapping[str, str], now: float) -> Read | None:
        """What to C{MGET} for C{job} with C{args}, or None: ask the service."""
        if self.layout is None or now < self._redis_due:
            return None
        return self._read_of(self.layout, job, args)

    def _read_of(self, layout: Layout, job: str, args: Mapping[str, str]) -> Read | None:
        """L{read_of}, remembered by the layout: a lookup's keys change only with it."""
        lookup = (job, tuple(args.items()))
        reads = layout.reads
        try:
            return reads[lookup]
        except KeyError:
            pass
        read = read_of(layout, job, args)
        if read is None:  # (not remembered: its arguments may be of any size)
            return None
        if len(reads) >= MAX_READS:
            reads.clear()
        reads[lookup] = read
        return read

    def batch(self, lookups: Sequence[tuple[str, Mapping[str, str]]], now: float) -> Batch | None:
        """
        What to C{MGET} for many lookups (job, args), or None: ask the service
        for all.  L{BatchTooLarge} for more lookups than the service takes, as
        it would answer, whether or not they are hits.
        """
        if self.layout is None or now < self._redis_due:
            return None
        most = self.layout.max_batch
        if most is not None and len(lookups) > most:
            raise BatchTooLarge(413, "batch_too_large", f"a batch may hold at most {most} items")
        reads = tuple(self._read_of(self.layout, job, args) for job, args in lookups)
        keys = tuple(dict.fromkeys(key for read in reads if read is not None for key in read.keys))
        return Batch(reads, keys) if keys else None

    def redis_failed(self, now: float) -> None:
        """Redis failed: no direct read for L{REDIS_BACKOFF} seconds."""
        self._redis_due = now + REDIS_BACKOFF
