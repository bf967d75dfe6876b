"""
What a shared store (Redis, memcached) holds, decoded and checked once per
read of the store: other programs may write there, so an entry is used only if
it is one refresherd could have written (C{docs/store-format.md}, "What a
reader checks"); anything else reads as absent, with a warning naming the key
and the reason, never the content.  A near cache keeps what was read here, so
its hits check nothing again.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import attrs
from twisted.logger import Logger

from refresherd.entry import (
    Entry,
    EntryFormatError,
    decode,
    entry_problem,
    is_json_content_type,
    largest_entry,
)

DEFAULT_MAX_ENTRY_BYTES = largest_entry(32 * 1024 * 1024)
"""The largest entry a store told nothing else reads: a job's default C{max_value_bytes}."""

WARNED_KEYS_MAX = 1024
"""Keys warned about, at most: one warning per key, and none once this many were."""

CHECKED_MIN_BYTES = 16 * 1024
"""
JSON bodies from this size up are parsed once and then known by their digest
(parsing 10 MiB of JSON takes a third of a second; its digest a hundredth).
"""
CHECKED_KEPT = 1024
"""Digests of valid JSON bodies kept (all are forgotten when more come)."""


@attrs.define(eq=False)
class EntryReader:
    """
    Decodes and checks the bytes a shared store holds under a key.

    @ivar where: the store, for messages (C{"Redis"}, C{"memcached"}).
    @ivar max_entry_bytes: the largest entry taken (L{refresherd.entry.largest_entry}).
    """

    where: str
    max_entry_bytes: int

    _log: ClassVar[Logger] = Logger()
    _warned: set[str] = attrs.field(init=False, repr=False, factory=set)
    _valid_json: dict[bytes, None] = attrs.field(init=False, repr=False, factory=dict)

    def entry(self, key: str, data: bytes | None) -> Entry | None:
        """The entry of C{data} read under C{key}; None if absent or it fails a check."""
        if data is None:
            return None
        if len(data) > self.max_entry_bytes:
            self.unreadable(
                key, f"{len(data)} bytes, over the largest entry ({self.max_entry_bytes})"
            )
            return None
        try:
            entry = decode(data)
        except EntryFormatError as e:
            self.unreadable(key, str(e))
            return None
        digest = self._digest_of_json(entry)
        known = digest is not None and digest in self._valid_json
        why = entry_problem(entry, body_checked=known)
        if why is not None:
            self.unreadable(key, why)
            return None
        if digest is not None and not known:
            if len(self._valid_json) >= CHECKED_KEPT:
                self._valid_json.clear()
            self._valid_json[digest] = None
        return entry

    def _digest_of_json(self, entry: Entry) -> bytes | None:
        """The digest of a large JSON body, by which it is known once checked; else None."""
        body = entry.body
        if body is None or len(body) < CHECKED_MIN_BYTES:
            return None
        if not is_json_content_type(entry.content_type):
            return None
        return hashlib.blake2b(body, digest_size=32).digest()

    def unreadable(self, key: str, why: str) -> None:
        """Warn, once per key, that what C{key} holds reads as absent, and why."""
        if key not in self._warned and len(self._warned) < WARNED_KEYS_MAX:
            self._warned.add(key)
            self._log.warn(
                "Entry {key} in {where} is unreadable ({why}); it reads as absent",
                key=key,
                where=self.where,
                why=why,
            )
