"""
Purge notices: how a process tells the others sharing its store of a soft
purge, so that each regenerates the hot keys it covers (docs/README.md,
"Background refreshes"; on Redis, docs/redis.md).

A notice is compact JSON, C{{"from": ORIGIN, "keys": [...], "jobs": [...],
"tags": [...]}}, C{ORIGIN} a random token of the process that purged.  What
is heard is untrusted (any client of the store may publish one): L{decode}
takes only a JSON object of exactly those fields, of lists of strings, of at
most L{MAX_NOTICE_BYTES} and L{MAX_NOTICE_NAMES} names in all.  Whether the
names mean anything here (keys of this namespace, jobs that exist) is the
refresher's to check.
"""

from __future__ import annotations

import json

import attrs

MAX_NOTICE_BYTES = 1024 * 1024
"""The largest notice heard; a larger one is ignored (L{encode} splits one that would be)."""
MAX_NOTICE_NAMES = 1000
"""The most keys, jobs and tags one notice names in all: as many as one purge may."""
FIELDS = frozenset({"from", "keys", "jobs", "tags"})


@attrs.frozen
class Notice:
    """A soft purge of C{keys}, C{jobs} and C{tags}, made by the process C{origin}."""

    origin: str
    keys: list[str]
    jobs: list[str]
    tags: list[str]


def encode(origin: str, keys: list[str], jobs: list[str], tags: list[str]) -> list[bytes]:
    """
    The notices of a soft purge: one, unless it would pass L{MAX_NOTICE_BYTES}
    (1,000 tags full of characters JSON escapes); then its names are split
    over as many as it takes.
    """
    names = [("keys", k) for k in keys] + [("jobs", j) for j in jobs] + [("tags", t) for t in tags]
    return _encode(origin, names)


def _encode(origin: str, names: list[tuple[str, str]]) -> list[bytes]:
    lists: dict[str, list[str]] = {"keys": [], "jobs": [], "tags": []}
    for kind, name in names:
        lists[kind].append(name)
    fields = {"from": origin, **lists}
    data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) <= MAX_NOTICE_BYTES or len(names) <= 1:
        return [data]
    half = len(names) // 2
    return _encode(origin, names[:half]) + _encode(origin, names[half:])


def decode(data: bytes) -> Notice:
    """The notice C{data} holds; else L{ValueError} saying why in one line (not what it held)."""
    if len(data) > MAX_NOTICE_BYTES:
        raise ValueError(f"larger than {MAX_NOTICE_BYTES} bytes")
    try:
        fields = json.loads(data.decode("utf-8"), parse_constant=_refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(fields, dict) or set(fields) != FIELDS:
        raise ValueError("not an object of from, keys, jobs and tags")
    origin = fields["from"]
    if not isinstance(origin, str):
        raise ValueError("its from is not a string")
    lists = [fields[kind] for kind in ("keys", "jobs", "tags")]
    for names in lists:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("its keys, jobs or tags are not lists of strings")
    if sum(map(len, lists)) > MAX_NOTICE_NAMES:
        raise ValueError(f"more than {MAX_NOTICE_NAMES} names")
    keys, jobs, tags = lists
    return Notice(origin, keys, jobs, tags)


def _refuse(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")
