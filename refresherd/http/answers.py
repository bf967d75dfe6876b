"""
An answer as HTTP: its JSON object (with the stored value spliced in), its
C{Cache-Status}, C{Age} and C{ETag}, and a 304 for a matching C{If-None-Match}.
"""

from __future__ import annotations

import json
import math
import weakref
from typing import Any

import attrs
from twisted.web.iweb import IRequest

from refresherd.core.refresher import Answer
from refresherd.entry import Entry, is_json_content_type
from refresherd.errors import one_line
from refresherd.http.common import JSON, header, value_member, with_value


def cache_status(answer: Answer, now: float) -> bytes:
    """The RFC 9211 C{Cache-Status} of an answer at C{now}: a hit's C{ttl} is never negative."""
    entry = answer.entry
    if answer.status == "pending" or entry is None:
        return b"refresherd; fwd=miss"
    if answer.status == "miss":
        return b"refresherd; fwd=miss; stored" if answer.stored else b"refresherd; fwd=miss"
    ttl = math.floor(entry.fresh_until - now)
    if ttl < 0 and answer.status == "hit":
        ttl = 0  # decided fresh a moment before C{now} (read from the store, rendered later)
    return b"refresherd; hit; ttl=%d" % ttl


def etag_matches(if_none_match: bytes | None, etag: str) -> bool:
    """Weak comparison of C{If-None-Match} with the current ETag."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.decode("latin-1").split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def answer_body(answer: Answer, now: float) -> bytes:
    """The JSON object of an answer.  A JSON value is spliced in as stored."""
    head: dict[str, Any] = {"job": answer.job, "key": answer.key, "status": answer.status}
    entry = answer.entry
    if entry is None:
        return json.dumps(head).encode("utf-8")
    head.update(
        content_type=entry.content_type,
        fetched_at=entry.fetched_at,
        fresh_until=entry.fresh_until,
        stale_until=entry.stale_until,
        age=round(max(0.0, now - entry.fetched_at), 3),
    )
    if answer.error is not None:
        head["error"] = one_line(answer.error)
    return with_value(head, entry)


BODIES_KEPT = 4096
"""How many answer heads L{Bodies} keeps (all are forgotten when more come)."""
VALUES_KEPT = 16 * 1024 * 1024
"""
How many bytes of values not stored as JSON L{Bodies} keeps as their JSON
members (all are forgotten when more come; a larger one is never kept).
"""


@attrs.define
class Bodies:
    """
    L{answer_body}, faster for the answers nearly all traffic is, a value
    with no error: their bytes before C{age}, which change only with the
    entry, are kept per key and status while the entry is the same (held
    weakly: a value the store has let go of is not kept alive here), and
    so is the member holding a value not stored as JSON (a string, or
    base64: at most L{VALUES_KEPT} bytes of them); a JSON value is spliced
    in as stored.  The same JSON, with C{age} written with three decimals
    (C{10.500}).
    """

    _kept: dict[tuple[str, str], tuple[weakref.ref[Entry], bytes, bytes | None]] = attrs.field(
        factory=dict
    )
    _values: int = attrs.field(default=0, init=False)
    """Bytes of the value members kept."""

    def body(self, answer: Answer, now: float) -> bytes:
        entry = answer.entry
        if entry is None or answer.error is not None:
            return answer_body(answer, now)
        memo = (answer.key, answer.status)
        kept = self._kept.get(memo)
        if kept is None or kept[0]() is not entry:
            kept = self._keep(memo, answer, entry)
        age = now - entry.fetched_at
        if kept[2] is None:
            return b'%s%.3f,"value":%s}' % (kept[1], age if age > 0 else 0.0, entry.body or b"")
        return b"%s%.3f,%s}" % (kept[1], age if age > 0 else 0.0, kept[2])

    def _keep(
        self, memo: tuple[str, str], answer: Answer, entry: Entry
    ) -> tuple[weakref.ref[Entry], bytes, bytes | None]:
        member = None if is_json_content_type(entry.content_type) else value_member(entry)
        size = 0 if member is None else len(member)
        kept = (weakref.ref(entry), _head(answer, entry), member)
        old = self._kept.pop(memo, None)
        if old is not None and old[2] is not None:
            self._values -= len(old[2])
        if size <= VALUES_KEPT:
            if len(self._kept) >= BODIES_KEPT or self._values + size > VALUES_KEPT:
                self._kept.clear()
                self._values = 0
            self._kept[memo] = kept
            self._values += size
        return kept


def _head(answer: Answer, entry: Entry) -> bytes:
    """The bytes of L{answer_body} up to the value of C{age}."""
    head = {
        "job": answer.job,
        "key": answer.key,
        "status": answer.status,
        "content_type": entry.content_type,
        "fetched_at": entry.fetched_at,
        "fresh_until": entry.fresh_until,
        "stale_until": entry.stale_until,
    }
    return json.dumps(head).encode("utf-8")[:-1] + b', "age": '


def render_answer(
    request: IRequest,
    answer: Answer,
    raw: bool,
    now: float,
    bodies: Bodies,
    conditional: bool = True,
) -> bytes:
    """
    The body of C{answer} with its status and headers set on C{request}: the
    JSON object, or with C{raw} the value as stored (with its own content
    type); with C{conditional}, a 304 when C{If-None-Match} matches.
    """
    request.setHeader(b"Cache-Status", cache_status(answer, now))
    entry = answer.entry
    if entry is None:
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", JSON)
        return answer_body(answer, now)
    request.setHeader(b"Age", b"%d" % max(0, math.floor(now - entry.fetched_at)))
    request.setHeader(b"ETag", entry.etag.encode("ascii"))
    if conditional and etag_matches(header(request, b"If-None-Match"), entry.etag):
        request.setResponseCode(304)
        return b""
    if raw:
        request.setHeader(b"Content-Type", entry.content_type.encode("latin-1"))
        return entry.body or b""
    request.setHeader(b"Content-Type", JSON)
    return bodies.body(answer, now)
