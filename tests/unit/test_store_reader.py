"""
What a shared store's reader takes (L{refresherd.stores.reader}): entries
that pass the checks of docs/store-format.md, once per read; anything else
reads as absent with one warning per key, naming the key and the reason,
never the content.  On real servers: tests/integration/test_store_redis.py
and tests/integration/test_store_memcached.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

import refresherd.entry
from refresherd.entry import METADATA_MAX_BYTES, Entry, encode, largest_entry
from refresherd.stores.reader import CHECKED_KEPT, CHECKED_MIN_BYTES, WARNED_KEYS_MAX, EntryReader
from tests.store_contract import sample_entry

KEY = "rfd:tweets:v1:user=bob"
SECRET = "<secret content>"


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer  # type: ignore[misc]
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bodies the entry checks parse as JSON."""
    parsed: list[bytes] = []
    check = refresherd.entry.check_json_body

    def counted(body: bytes) -> None:
        parsed.append(body)
        check(body)

    monkeypatch.setattr(refresherd.entry, "check_json_body", counted)
    return parsed


def reader() -> EntryReader:
    return EntryReader("Redis", largest_entry(1024 * 1024))


def warnings(logged: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in logged if e["log_level"] == LogLevel.warn]


def test_an_entry_that_passes_is_read() -> None:
    entry = sample_entry()
    assert reader().entry(KEY, encode(entry)) == entry
    assert reader().entry(KEY, None) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"body": b'1,"status":"hit"'}, "the content type is JSON but the body is not"),
        ({"etag": 'W/"\u00e9"'}, "etag"),
        ({"content_type": "text/plain\r\nX-Injected: 1"}, "content type"),
        ({"fresh_until": 1e300}, "fresh_until"),
    ],
)
def test_an_entry_that_fails_reads_as_absent_with_one_warning_naming_key_and_reason(
    logged: list[dict[str, Any]], changes: dict[str, Any], reason: str
) -> None:
    entries = reader()
    data = encode(attrs.evolve(sample_entry(), last_error=SECRET, **changes))
    assert entries.entry(KEY, data) is None
    assert entries.entry(KEY, data) is None
    [warning] = warnings(logged)
    assert KEY in warning and reason in warning and "in Redis" in warning
    assert SECRET not in warning and "status" not in warning


def test_bytes_that_are_not_an_entry_read_as_absent(logged: list[dict[str, Any]]) -> None:
    assert reader().entry(KEY, b"007") is None
    [warning] = warnings(logged)
    assert "no metadata line" in warning


def test_an_entry_over_the_largest_is_absent_before_it_is_decoded(
    logged: list[dict[str, Any]], parses: list[bytes]
) -> None:
    entries = EntryReader("Redis", 1000)
    data = encode(sample_entry(b"[" + b"1," * 600 + b"1]"))
    assert len(data) > 1000
    assert entries.entry(KEY, data) is None
    assert parses == []
    [warning] = warnings(logged)
    assert f"{len(data)} bytes, over the largest entry (1000)" in warning


def test_the_largest_entry_is_a_value_of_the_largest_size_with_its_metadata() -> None:
    body = json.dumps("x" * (100_000 - 2)).encode()
    assert len(body) == 100_000
    entry = sample_entry(body)
    assert EntryReader("Redis", largest_entry(100_000)).entry(KEY, encode(entry)) == entry
    assert largest_entry(100_000) == METADATA_MAX_BYTES + 1 + 100_000


def test_a_metadata_line_over_its_limit_is_refused_before_it_is_parsed(
    logged: list[dict[str, Any]],
) -> None:
    entry = sample_entry(args={"q": "x" * METADATA_MAX_BYTES})
    assert reader().entry(KEY, encode(entry)) is None
    [warning] = warnings(logged)
    assert "metadata" in warning


def test_warnings_stop_after_many_keys(logged: list[dict[str, Any]]) -> None:
    entries = reader()
    for i in range(WARNED_KEYS_MAX + 5):
        entries.entry(f"{KEY}{i}", b"007")
    assert len(warnings(logged)) == WARNED_KEYS_MAX


def large(body_prefix: str = "") -> Entry:
    body = json.dumps(body_prefix + "x" * CHECKED_MIN_BYTES).encode()
    return sample_entry(body)


def test_a_large_json_body_is_parsed_once_then_known_by_its_digest(parses: list[bytes]) -> None:
    entries = reader()
    entry = large()
    for _ in range(3):
        assert entries.entry(KEY, encode(entry)) == entry
    assert len(parses) == 1


def test_a_small_json_body_is_parsed_at_every_read(parses: list[bytes]) -> None:
    entries = reader()
    for _ in range(3):
        entries.entry(KEY, encode(sample_entry()))
    assert len(parses) == 3


def test_only_the_body_is_known_every_other_field_is_checked_again() -> None:
    entries = reader()
    entry = large()
    assert entries.entry(KEY, encode(entry)) == entry
    assert entries.entry(KEY, encode(attrs.evolve(entry, etag="\u00e9"))) is None


def test_a_different_body_is_parsed_even_under_the_same_etag(logged: list[dict[str, Any]]) -> None:
    """A known body is known by its bytes, not by anything a writer could copy."""
    entries = reader()
    entry = large()
    assert entries.entry(KEY, encode(entry)) == entry
    assert entry.body is not None
    hostile = attrs.evolve(entry, body=entry.body[:-1] + b',"status":"hit"')
    assert entries.entry(KEY, encode(hostile)) is None
    assert "JSON but the body is not" in warnings(logged)[0]


def test_a_body_that_failed_is_never_known(parses: list[bytes]) -> None:
    entries = reader()
    entry = large()
    assert entry.body is not None
    hostile = encode(attrs.evolve(entry, body=entry.body + b"]"))
    for _ in range(2):
        assert entries.entry(KEY, hostile) is None
    assert len(parses) == 2


def test_known_bodies_are_bounded(parses: list[bytes]) -> None:
    entries = reader()
    for i in range(CHECKED_KEPT + 1):
        entries.entry(KEY, encode(large(str(i))))
    entries.entry(KEY, encode(large("0")))
    assert len(parses) == CHECKED_KEPT + 2
