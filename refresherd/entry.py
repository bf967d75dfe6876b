"""
What the store holds for a key, and its byte format.

An L{Entry} is either a value (with its fetch time, its freshness windows, the
duration of the fetch that produced it and the state of failing refreshes) or,
with C{body=None}, the memory of a failed fetch of an absent value, kept for
the job's C{error_ttl} so that callers get their 502 at once.

The byte format (L{encode}/L{decode}), used by every store that is not in
process memory, is documented in C{docs/store-format.md}: one line of JSON
metadata, a newline, then the body bytes.  What a reader of a shared store
checks before it uses an entry (L{entry_problem}) is documented there too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

import attrs

FORMAT_VERSION = 1

METADATA_MAX_BYTES = 1024 * 1024
"""
The longest metadata line a reader takes (the line refresherd writes is a few
hundred bytes, and its arguments at most 1 KiB each).
"""

MAX_TIME = 1e12
"""The largest time (and fetch duration) a reader takes: about the year 33658."""

MAX_FAILURES = 2**31 - 1

MAX_ETAG_CHARS = 256

MAX_LAST_MODIFIED_CHARS = 64

MAX_WHY_CHARS = 256
"""The longest line of an entry's C{lifetimes}."""

LIFETIME_NAMES = ("fresh", "stale", "stale_if_error")

MAX_TAGS = 256
"""The most tags an entry may carry (its job's and its origin's); each is read with it."""

_CONTENT_TYPE = re.compile(r"[\x20-\x7e\xa0-\xff]*")
_ETAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e]*"')
_MARK = re.compile(r"(?:[0-9a-f]{32})?")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def is_entity_tag(text: str) -> bool:
    """Whether C{text} is one entity tag (RFC 9110 8.8.3) of printable ASCII, at most 256 long."""
    return len(text) <= MAX_ETAG_CHARS and _ETAG.fullmatch(text) is not None


def make_etag(body: bytes, fetched_at: float) -> str:
    """A weak ETag derived from a stored body and its fetch time."""
    digest = hashlib.blake2b(body, digest_size=12, salt=struct.pack("<d", fetched_at))
    return f'W/"{digest.hexdigest()}"'


def is_json_content_type(content_type: str) -> bool:
    """Whether a content type is JSON: C{application/json} or C{*/*+json}, parameters aside."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or ("/" in media and media.endswith("+json"))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """
    The document of C{body} if it is strict JSON in UTF-8 (no NaN or
    Infinity), else L{ValueError} saying why; nesting too deep to parse is a
    L{ValueError} too, never a C{RecursionError}.
    """
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def check_json_body(body: bytes) -> None:
    """
    Raise L{ValueError} unless C{body} is strict JSON in UTF-8 (no NaN or
    Infinity), so that the API can splice it into its answers as it is.
    """
    parse_json(body)


NO_VALIDATORS = ("", "")
"""The validators of an entry the origin gave none: no conditional request."""


@attrs.frozen
class Lifetimes:
    """
    The windows of one entry when they are not its job's: what the origin's
    caching headers said (C{freshness = "origin"}), bounded by the job, or
    what a python job's L{refresherd.Result} asked.
    """

    fresh: float
    stale: float
    stale_if_error: float
    why: Mapping[str, str] = attrs.field(factory=dict)
    """For an operator: where each window (C{fresh}, C{stale}, C{stale_if_error}) came from."""


@attrs.frozen
class Fetched:
    """What one successful fetch attempt produced."""

    body: bytes
    content_type: str
    lifetimes: Lifetimes | None = None
    """The entry's windows, or None for the job's."""
    no_store: str = ""
    """Why the value must not be stored (the origin said so), or C{""}."""
    tags: tuple[str, ...] = ()
    """Tags beyond the job's (the origin's C{Surrogate-Key}, a python job's result)."""
    tags_dropped: int = 0
    """Tags the origin sent that were dropped (over the bounds)."""
    validators: tuple[str, str] = ("", "")
    """The origin's C{ETag} and C{Last-Modified}, to revalidate with (C{""}: none)."""
    not_modified: bool = False
    """The origin answered 304 to a conditional request: the stored value stands (no body)."""


@attrs.frozen
class Entry:
    body: bytes | None
    content_type: str
    fetched_at: float
    fresh_until: float
    stale_until: float
    """C{fresh_until + stale}: served stale and refreshed until then."""
    error_until: float
    """C{fresh_until + stale_if_error}: served stale until then while refreshes fail."""
    duration: float
    """How long the fetch that produced the body took (the XFetch delta)."""
    job: str
    args: Mapping[str, str]
    tags: tuple[str, ...] = ()
    etag: str = ""
    failures: int = 0
    """Failed refreshes since the body was fetched (or failed fetches of an absent value)."""
    last_error: str | None = None
    retry_at: float = 0.0
    """No refresh starts before this: backoff while refreshes fail, C{error_ttl} for a failure."""
    marks: tuple[str, str] = ("", "")
    """
    The hard and soft purge marks of the job and tags when the fetch began
    (L{refresherd.core.marks}): a purge of the job or a tag changes the
    current mark, and the entry then reads as purged.  Stored as the field
    C{generations} (docs/store-format.md).
    """
    validators: tuple[str, str] = ("", "")
    """The origin's C{ETag} and C{Last-Modified} (C{""}: none), sent to revalidate the entry."""
    lifetimes: Mapping[str, str] = attrs.field(factory=dict)
    """Where windows that are not the job's came from, per window (empty: all the job's)."""

    @property
    def is_failure(self) -> bool:
        return self.body is None

    @property
    def expires_at(self) -> float:
        """When the store may forget this entry."""
        if self.body is None:
            return self.retry_at
        return max(self.stale_until, self.error_until)

    def size(self) -> int:
        return len(self.body or b"")


def value_entry(
    fetched: Fetched,
    *,
    job: str,
    args: Mapping[str, str],
    tags: tuple[str, ...],
    now: float,
    duration: float,
    fresh: float,
    stale: float,
    stale_if_error: float,
    marks: tuple[str, str] = ("", ""),
    min_refresh: float = 0.0,
    previous: Entry | None = None,
) -> Entry:
    """
    A new entry for a value fetched (or put) at C{now}.  C{fresh}, C{stale}
    and C{stale_if_error} are the job's, used unless C{fetched} brings its
    own L{Lifetimes}; then, when its C{fresh} is shorter than C{min_refresh},
    no refresh starts before C{now + min_refresh} and it is served (stale)
    until then at least.
    C{tags} are the job's, and the fetched ones follow them.  For a
    C{not_modified} answer, C{previous} (the value revalidated) is renewed:
    its body, content type and served ETag stay, and each of its validators
    unless the answer gives a new one; its windows start again at C{now}.
    """
    lifetimes = fetched.lifetimes
    if lifetimes is not None:
        fresh, stale, stale_if_error = lifetimes.fresh, lifetimes.stale, lifetimes.stale_if_error
    fresh_until = now + fresh
    stale_until = fresh_until + stale
    retry_at = 0.0
    if lifetimes is not None and fresh < min_refresh:
        # No refresh before min_refresh, and served (stale) until then.
        retry_at = now + min_refresh
        stale_until = max(stale_until, retry_at)
    all_tags = tuple(dict.fromkeys(tags + fetched.tags)) if fetched.tags else tags
    if fetched.not_modified:
        if previous is None or previous.body is None:
            raise ValueError("a 304 renews a stored value, and there is none")
        body, content_type, etag = previous.body, previous.content_type, previous.etag
        validators = (
            fetched.validators[0] or previous.validators[0],
            fetched.validators[1] or previous.validators[1],
        )
    else:
        body, content_type = fetched.body, fetched.content_type
        etag, validators = make_etag(body, now), fetched.validators
    return Entry(
        body=body,
        content_type=content_type,
        fetched_at=now,
        fresh_until=fresh_until,
        stale_until=stale_until,
        error_until=fresh_until + stale_if_error,
        duration=duration,
        job=job,
        args=dict(args),
        tags=all_tags,
        etag=etag,
        retry_at=retry_at,
        marks=marks,
        validators=validators,
        lifetimes=dict(lifetimes.why) if lifetimes is not None else {},
    )


_META_FIELDS = (
    "content_type",
    "fetched_at",
    "fresh_until",
    "stale_until",
    "error_until",
    "duration",
    "job",
    "args",
    "tags",
    "etag",
    "failures",
    "last_error",
    "retry_at",
)


def encode(entry: Entry) -> bytes:
    """The bytes of C{entry} in format version 1."""
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "has_body": entry.body is not None}
    for name in _META_FIELDS:
        value = getattr(entry, name)
        meta[name] = list(value) if name == "tags" else value
    meta["args"] = dict(entry.args)
    meta["generations"] = list(entry.marks)
    if entry.validators[0]:
        meta["origin_etag"] = entry.validators[0]
    if entry.validators[1]:
        meta["last_modified"] = entry.validators[1]
    if entry.lifetimes:
        meta["lifetimes"] = dict(entry.lifetimes)
    head = json.dumps(meta, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return head.encode("ascii") + b"\n" + (entry.body or b"")


class EntryFormatError(ValueError):
    """Bytes that are not an entry of a format this version reads."""


def decode(data: bytes) -> Entry:
    """The entry encoded in C{data}; L{EntryFormatError} if it is not one."""
    end = data.find(b"\n", 0, METADATA_MAX_BYTES + 1)
    if end < 0:
        if b"\n" in data:
            raise EntryFormatError(f"metadata line over {METADATA_MAX_BYTES} bytes")
        raise EntryFormatError("no metadata line")
    head, body = data[:end], data[end + 1 :]
    try:
        meta = json.loads(head)
    except (ValueError, RecursionError) as e:
        raise EntryFormatError(f"metadata is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise EntryFormatError("unknown entry format")
    try:
        fields = {name: meta[name] for name in _META_FIELDS}
    except KeyError as e:
        raise EntryFormatError(f"bad metadata: no field {e}") from None
    for name, kind in _META_TYPES.items():
        if not _is(fields[name], kind):
            raise EntryFormatError(f"bad metadata: {name!r} is not {kind}")
    if not all(isinstance(tag, str) for tag in fields["tags"]) or not all(
        isinstance(v, str) for v in fields["args"].values()
    ):
        raise EntryFormatError("bad metadata: tags and argument values must be strings")
    if not isinstance(meta.get("has_body"), bool):
        raise EntryFormatError("bad metadata: 'has_body' is not a boolean")
    fields["tags"] = tuple(fields["tags"])
    generations = meta.get("generations", ["", ""])
    if (
        not isinstance(generations, list)
        or len(generations) != 2
        or not all(isinstance(g, str) for g in generations)
    ):
        raise EntryFormatError("bad metadata: 'generations' is not two strings")
    validators = (meta.get("origin_etag", ""), meta.get("last_modified", ""))
    if not all(isinstance(v, str) for v in validators):
        raise EntryFormatError("bad metadata: 'origin_etag' and 'last_modified' must be strings")
    lifetimes = meta.get("lifetimes", {})
    if not isinstance(lifetimes, dict) or not all(
        name in LIFETIME_NAMES and isinstance(why, str) for name, why in lifetimes.items()
    ):
        raise EntryFormatError(
            "bad metadata: 'lifetimes' is not an object of window names to strings"
        )
    return Entry(
        body=body if meta["has_body"] else None,
        marks=(generations[0], generations[1]),
        validators=validators,
        lifetimes=lifetimes,
        **fields,
    )


_META_TYPES = {
    "content_type": "str",
    "fetched_at": "number",
    "fresh_until": "number",
    "stale_until": "number",
    "error_until": "number",
    "duration": "number",
    "job": "str",
    "args": "object",
    "tags": "array",
    "etag": "str",
    "failures": "int",
    "last_error": "str or null",
    "retry_at": "number",
}


def _is(value: object, kind: str) -> bool:
    if kind == "number":
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "str or null":
        return value is None or isinstance(value, str)
    return isinstance(value, {"str": str, "object": dict, "array": list}[kind])


def largest_entry(max_value_bytes: int) -> int:
    """The bytes of the largest entry a reader takes when no value is over C{max_value_bytes}."""
    return METADATA_MAX_BYTES + 1 + max_value_bytes


def content_type_problem(content_type: str) -> str | None:
    """
    Why C{content_type} cannot be stored (and sent as a C{Content-Type} as it
    is), or None: every character must be printable Latin-1, U+0020 to U+007E
    or U+00A0 to U+00FF (no control character, no CR or LF, no tab).
    """
    if _CONTENT_TYPE.fullmatch(content_type) is None:
        return "the content type is not printable Latin-1 (control characters or beyond U+00FF)"
    return None


def entry_problem(entry: Entry, *, body_checked: bool = False) -> str | None:
    """
    Why an entry read from a shared store must read as absent, or None: what
    a reader checks (docs/store-format.md, "What a reader checks"), beyond the
    types that L{decode} checks.  The reason names the field, never its
    content.  With C{body_checked}, a JSON body is known to be valid already
    (the same bytes were checked before) and is not parsed again.
    """
    for name in ("fetched_at", "fresh_until", "stale_until", "error_until", "retry_at", "duration"):
        if not 0 <= getattr(entry, name) <= MAX_TIME:
            return f"{name!r} is not from 0 to {MAX_TIME:.0e}"
    if len(entry.tags) > MAX_TAGS:
        return f"'tags' are more than {MAX_TAGS}"
    if not 0 <= entry.failures <= MAX_FAILURES:
        return f"'failures' is not from 0 to {MAX_FAILURES}"
    if not all(_MARK.fullmatch(mark) for mark in entry.marks):
        return "'generations' are not empty or 32 lowercase hex digits"
    origin_etag, last_modified = entry.validators
    if origin_etag and not is_entity_tag(origin_etag):
        return "'origin_etag' is not an entity tag of printable ASCII"
    if len(last_modified) > MAX_LAST_MODIFIED_CHARS or not _PRINTABLE.fullmatch(last_modified):
        return f"'last_modified' is not printable ASCII of at most {MAX_LAST_MODIFIED_CHARS} chars"
    if any(len(why) > MAX_WHY_CHARS for why in entry.lifetimes.values()):
        return f"a line of 'lifetimes' is over {MAX_WHY_CHARS} characters"
    why = content_type_problem(entry.content_type)
    if why is not None:
        return why
    if entry.body is None:
        return None
    if not is_entity_tag(entry.etag):
        return "the etag is not an entity tag of printable ASCII"
    if not body_checked and is_json_content_type(entry.content_type):
        try:
            check_json_body(entry.body)
        except ValueError:
            return "the content type is JSON but the body is not"
    return None
