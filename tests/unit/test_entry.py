"""
Entries: their byte format (one line of JSON metadata, a newline, the body),
their ETag, and the windows of a new value.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refresherd.entry import (
    FORMAT_VERSION,
    Entry,
    EntryFormatError,
    Fetched,
    check_json_body,
    decode,
    encode,
    is_json_content_type,
    make_etag,
    value_entry,
)

times = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=40)

entries = st.builds(
    Entry,
    body=st.none() | st.binary(max_size=300),
    content_type=texts,
    fetched_at=times,
    fresh_until=times,
    stale_until=times,
    error_until=times,
    duration=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    job=texts,
    args=st.dictionaries(texts, texts, max_size=5),
    tags=st.lists(texts, max_size=5).map(tuple),
    etag=texts,
    failures=st.integers(min_value=0, max_value=2**40),
    last_error=st.none() | texts,
    retry_at=times,
    marks=st.tuples(texts, texts),
)


def an_entry(**changes: Any) -> Entry:
    fields: dict[str, Any] = dict(
        body=b"body",
        content_type="text/plain",
        fetched_at=100.5,
        fresh_until=160.5,
        stale_until=460.5,
        error_until=86_500.5,
        duration=0.25,
        job="tweets",
        args={"user": "bob"},
    )
    fields.update(changes)
    return Entry(**fields)


def meta_of(data: bytes) -> dict[str, Any]:
    head, _, _ = data.partition(b"\n")
    meta: dict[str, Any] = json.loads(head)
    return meta


def refuse_constant(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


@given(entries)
def test_decode_of_encode_is_the_entry(entry: Entry) -> None:
    assert decode(encode(entry)) == entry


@given(entries)
def test_encoding_is_one_ascii_json_line_then_the_body(entry: Entry) -> None:
    head, newline, body = encode(entry).partition(b"\n")
    assert newline == b"\n"
    meta = json.loads(head.decode("ascii"), parse_constant=refuse_constant)
    assert meta["format"] == FORMAT_VERSION
    assert meta["has_body"] is (entry.body is not None)
    assert body == (entry.body or b"")


def test_empty_body_and_failure_are_distinct() -> None:
    empty, failure = an_entry(body=b""), an_entry(body=None)
    assert decode(encode(empty)).body == b""
    assert decode(encode(failure)).body is None


def test_body_with_newlines_survives() -> None:
    entry = an_entry(body=b"\n\nline\r\n\x00")
    assert decode(encode(entry)).body == b"\n\nline\r\n\x00"


def test_unicode_is_escaped_in_the_metadata() -> None:
    entry = an_entry(args={"user": "b\u00f8b \U0001f40d"}, tags=("\u00e9",))
    data = encode(entry)
    assert data.partition(b"\n")[0].isascii()
    assert decode(data) == entry


@pytest.mark.parametrize("version", [0, 2, "1", 1.5, None])
def test_other_format_versions_are_refused(version: object) -> None:
    meta = meta_of(encode(an_entry()))
    meta["format"] = version
    with pytest.raises(EntryFormatError, match="unknown entry format"):
        decode(json.dumps(meta).encode("ascii") + b"\nbody")


def test_missing_format_version_is_refused() -> None:
    meta = meta_of(encode(an_entry()))
    del meta["format"]
    with pytest.raises(EntryFormatError, match="unknown entry format"):
        decode(json.dumps(meta).encode("ascii") + b"\nbody")


@pytest.mark.parametrize("missing", ["has_body", "content_type", "args", "tags", "retry_at"])
def test_missing_field_is_refused(missing: str) -> None:
    meta = meta_of(encode(an_entry()))
    del meta[missing]
    with pytest.raises(EntryFormatError, match="bad metadata"):
        decode(json.dumps(meta).encode("ascii") + b"\nbody")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"no newline at all",
        b"not json\nbody",
        b"\xff\xfe\x00garbage\nbody",
        b"[1, 2]\nbody",
        b"null\n",
        b'"text"\n',
        b'{"format": 1}\nbody',
        b'{"format": 1, "has_body": true, "tags": 5}\nbody',
    ],
)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(EntryFormatError):
        decode(data)


def test_deeply_nested_garbage_is_refused() -> None:
    with pytest.raises(EntryFormatError):
        decode(b"[" * 100_000 + b"\n")


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_entry_format_error(data: bytes) -> None:
    try:
        decode(data)
    except EntryFormatError:
        pass


def test_make_etag_is_weak_and_derived_from_body_and_fetched_at() -> None:
    salt = struct.pack("<d", 100.5)
    digest = hashlib.blake2b(b"body", digest_size=12, salt=salt)
    assert make_etag(b"body", 100.5) == f'W/"{digest.hexdigest()}"'


def test_make_etag_is_stable() -> None:
    assert make_etag(b"body", 100.5) == make_etag(b"body", 100.5)


def test_make_etag_differs_with_body() -> None:
    assert make_etag(b"body", 100.5) != make_etag(b"Body", 100.5)
    assert make_etag(b"", 100.5) != make_etag(b"\x00", 100.5)


def test_make_etag_differs_with_fetched_at() -> None:
    assert make_etag(b"body", 100.5) != make_etag(b"body", 100.50000000000001)
    assert make_etag(b"body", 0.0) != make_etag(b"body", 1.0)


@given(st.binary(), st.binary(), times)
def test_make_etag_differs_whenever_the_body_does(body: bytes, other: bytes, at: float) -> None:
    if body != other:
        assert make_etag(body, at) != make_etag(other, at)


@given(st.binary(), times, times)
def test_make_etag_differs_whenever_fetched_at_does(body: bytes, at: float, other: float) -> None:
    if repr(at) != repr(other):
        assert make_etag(body, at) != make_etag(body, other)


def test_make_etag_differs_when_body_and_fetched_at_both_do() -> None:
    assert make_etag(b"1", 2.0) != make_etag(b"", 12.0)


def test_value_entry_sets_its_windows_from_now() -> None:
    entry = value_entry(
        Fetched(b"[]", "application/json"),
        job="tweets",
        args={"user": "bob"},
        tags=("t",),
        now=1000.0,
        duration=0.5,
        fresh=60,
        stale=300,
        stale_if_error=86_400,
    )
    assert (entry.fetched_at, entry.fresh_until) == (1000.0, 1060.0)
    assert (entry.stale_until, entry.error_until) == (1360.0, 87_460.0)
    assert entry.expires_at == 87_460.0
    assert entry.etag == make_etag(b"[]", 1000.0)
    assert (entry.failures, entry.last_error, entry.retry_at) == (0, None, 0.0)
    assert not entry.is_failure


def test_failure_expires_at_its_retry_time() -> None:
    entry = an_entry(body=None, retry_at=130.0)
    assert entry.is_failure
    assert entry.expires_at == 130.0
    assert entry.size() == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tags", "ab"),
        ("args", ["a"]),
        ("fetched_at", "1"),
        ("failures", 1.5),
        ("job", None),
        ("args", {"a": 1}),
        ("has_body", "yes"),
    ],
)
def test_decode_refuses_metadata_of_the_wrong_type(field: str, value: object) -> None:
    """Bad stored data reads as unreadable, never as a wrong entry."""
    head, _, body = encode(an_entry()).partition(b"\n")
    meta = json.loads(head)
    meta[field] = value
    with pytest.raises(EntryFormatError):
        decode(json.dumps(meta).encode() + b"\n" + body)


def test_encode_refuses_non_finite_times() -> None:
    """The format is plain JSON that any language reads: no NaN or Infinity."""
    with pytest.raises(ValueError):
        encode(attrs.evolve(an_entry(), fresh_until=math.inf))


@pytest.mark.parametrize(
    "body", [b'{"a": NaN}', b"-Infinity", b"{", '"x"'.encode("utf-16"), b"\xff", b""]
)
def test_check_json_body_refuses_what_cannot_be_spliced_into_json(body: bytes) -> None:
    with pytest.raises(ValueError):
        check_json_body(body)


@pytest.mark.parametrize("body", [b'{"a": 1e400}', b"[]", '"é"'.encode(), b" 12 "])
def test_check_json_body_accepts_strict_utf8_json(body: bytes) -> None:
    check_json_body(body)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/json", False),
        ("+json", False),
        ("text/plain", False),
    ],
)
def test_is_json_content_type(content_type: str, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


def test_an_entry_without_generations_reads_as_never_purged() -> None:
    """Entries written before purges by job and tag existed carry no marks: none seen."""
    data = encode(an_entry(marks=("h", "s")))
    meta = meta_of(data)
    assert meta["generations"] == ["h", "s"]
    del meta["generations"]
    older = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + b"body"
    assert decode(older) == an_entry()


@pytest.mark.parametrize("generations", [["a"], ["a", 1], "ab", None, ["a", "b", "c"]])
def test_bad_generations_are_refused(generations: object) -> None:
    meta = meta_of(encode(an_entry()))
    meta["generations"] = generations
    with pytest.raises(EntryFormatError, match="generations"):
        decode(json.dumps(meta).encode() + b"\nbody")
