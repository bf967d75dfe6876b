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

from refresherd.core.policy import after_failure, soft_purged
from refresherd.entry import (
    FORMAT_VERSION,
    MAX_TIME,
    Entry,
    EntryFormatError,
    Fetched,
    Lifetimes,
    check_json_body,
    content_type_problem,
    decode,
    encode,
    entry_problem,
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
    validators=st.tuples(texts, texts),
    lifetimes=st.dictionaries(st.sampled_from(["fresh", "stale", "stale_if_error"]), texts),
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


# -- what a reader checks (docs/store-format.md) ---------------------------------------------


def a_value(body: bytes = b'{"n": 1}', content_type: str = "application/json") -> Entry:
    return value_entry(
        Fetched(body, content_type),
        job="tweets",
        args={"user": "bob"},
        tags=("user:bob",),
        now=1_767_225_600.25,
        duration=0.731,
        fresh=900,
        stale=86_400,
        stale_if_error=7 * 86_400,
        marks=("0123456789abcdef0123456789abcdef", ""),
    )


latin1_printable = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF).filter(
        lambda c: not 0x7F <= ord(c) <= 0x9F
    ),
    max_size=60,
)


@given(
    st.one_of(
        st.tuples(st.binary(max_size=200), latin1_printable.filter(lambda t: "json" not in t)),
        st.tuples(
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=10,
            ).map(lambda doc: json.dumps(doc).encode()),
            st.sampled_from(["application/json", "application/problem+json; charset=utf-8"]),
        ),
    ),
    st.floats(min_value=0, max_value=4e9),
    st.integers(min_value=0, max_value=10**6),
)
def test_every_entry_a_writer_makes_passes_the_reader_s_checks(
    value: tuple[bytes, str], now: float, failures: int
) -> None:
    """Fetches, PUTs, failed refreshes, remembered failures and soft purges all read back."""
    body, content_type = value
    entry = attrs.evolve(a_value(body, content_type), fetched_at=now)
    failed = after_failure(
        now, entry, job="j", args={}, error="origin answered 503", error_ttl=5.0, rand=0.5
    )
    remembered = after_failure(
        now, None, job="j", args={}, error="origin answered 503", error_ttl=5.0, rand=0.5
    )
    for written in (entry, failed, remembered, soft_purged(entry, now, 10.0)):
        assert written is not None
        assert entry_problem(decode(encode(attrs.evolve(written, failures=failures)))) is None


HOSTILE = "<script>\u0100\r\nX-Injected: 1"
"""Content no reason may show."""


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"body": b'1,"status":"hit","x":{}'}, "the content type is JSON but the body is not"),
        ({"body": b'{"n": NaN}'}, "the content type is JSON but the body is not"),
        ({"body": b"\xff"}, "the content type is JSON but the body is not"),
        ({"body": b"", "content_type": "application/vnd.x+json"}, "JSON but the body is not"),
        ({"etag": 'W/"\u00e9"'}, "etag"),
        ({"etag": HOSTILE}, "etag"),
        ({"etag": 'W/"a"b"'}, "etag"),
        ({"etag": "W/abc"}, "etag"),
        ({"etag": ""}, "etag"),
        ({"etag": 'W/"' + "a" * 300 + '"'}, "etag"),
        ({"content_type": "text/plain\u0100"}, "content type"),
        ({"content_type": "text/plain\r\nX-Injected: 1"}, "content type"),
        ({"content_type": "text/plain;\tcharset=utf-8"}, "content type"),
        ({"content_type": "text/plain\x85"}, "content type"),
        ({"content_type": "text/plain\x7f"}, "content type"),
        ({"content_type": HOSTILE}, "content type"),
        ({"fresh_until": 1e300}, "'fresh_until'"),
        ({"fetched_at": -1.0}, "'fetched_at'"),
        ({"stale_until": MAX_TIME * 2}, "'stale_until'"),
        ({"error_until": 1e308}, "'error_until'"),
        ({"retry_at": -5.0}, "'retry_at'"),
        ({"duration": 1e200}, "'duration'"),
        ({"failures": -1}, "'failures'"),
        ({"failures": 2**31}, "'failures'"),
        ({"marks": ("x", "")}, "'generations'"),
        ({"marks": ("", "0123456789ABCDEF0123456789ABCDEF")}, "'generations'"),
        ({"marks": ("", HOSTILE)}, "'generations'"),
    ],
)
def test_an_entry_that_fails_a_check_is_refused_naming_the_field_not_its_content(
    changes: dict[str, Any], reason: str
) -> None:
    entry = attrs.evolve(a_value(), **changes)
    why = entry_problem(decode(encode(entry)))
    assert why is not None and reason in why
    assert "\u0100" not in why and "script" not in why and "\n" not in why


def test_a_remembered_failure_is_checked_but_has_no_etag_or_body_to_check() -> None:
    failure = after_failure(100.0, None, job="j", args={}, error="x", error_ttl=5.0, rand=0.5)
    assert failure is not None and entry_problem(failure) is None
    assert entry_problem(attrs.evolve(failure, content_type="application/json")) is None
    assert entry_problem(attrs.evolve(failure, content_type="\r\n")) is not None
    assert entry_problem(attrs.evolve(failure, retry_at=1e300)) is not None


def test_a_json_body_known_to_be_valid_is_not_parsed_again() -> None:
    """What the caller checked before: everything else is still checked."""
    entry = attrs.evolve(a_value(), body=b"not json")
    assert entry_problem(entry, body_checked=True) is None
    assert entry_problem(attrs.evolve(entry, etag="\u00e9"), body_checked=True) is not None


def test_times_at_the_bounds_are_taken() -> None:
    entry = attrs.evolve(a_value(), fetched_at=0.0, stale_until=MAX_TIME, duration=0.0)
    assert entry_problem(entry) is None


@pytest.mark.parametrize(
    "content_type",
    ["", "text/plain", "text/html; charset=utf-8", "application/x.caf\u00e9", 'a/b; q="x y"'],
)
def test_printable_latin1_content_types_can_be_stored(content_type: str) -> None:
    assert content_type_problem(content_type) is None


@pytest.mark.parametrize(
    "content_type", ["\x00", "a\tb", "a\rb", "a\nb", "a\x7fb", "a\x9fb", "\u0100", "\U0001f40d"]
)
def test_control_characters_and_beyond_latin1_cannot(content_type: str) -> None:
    assert content_type_problem(content_type) is not None


def test_origin_fields_are_written_only_when_there_are_some() -> None:
    assert not {"origin_etag", "last_modified", "lifetimes"} & set(meta_of(encode(an_entry())))
    entry = an_entry(validators=('"v1"', "Sun, 06 Nov 1994 08:49:37 GMT"), lifetimes={"fresh": "x"})
    meta = meta_of(encode(entry))
    assert (meta["origin_etag"], meta["last_modified"], meta["lifetimes"]) == (
        '"v1"',
        "Sun, 06 Nov 1994 08:49:37 GMT",
        {"fresh": "x"},
    )
    assert decode(encode(entry)) == entry


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"validators": ('"a"\r\nX-Injected: 1', "")}, "origin_etag"),
        ({"validators": ("abc", "")}, "origin_etag"),
        ({"validators": ("", "Sun\r\nX: 1")}, "last_modified"),
        ({"validators": ("", "x" * 65)}, "last_modified"),
        ({"lifetimes": {"fresh": "x" * 257}}, "lifetimes"),
        ({"tags": tuple(str(i) for i in range(257))}, "tags"),
    ],
)
def test_a_reader_refuses_origin_fields_it_could_not_send_or_show(
    changes: dict[str, Any], why: str
) -> None:
    entry = an_entry(etag=make_etag(b"body", 100.5), **changes)
    problem = entry_problem(entry)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    "lifetimes",
    [{"fresh": 1}, {"other": "x"}, ["fresh"], "fresh"],
)
def test_decode_refuses_lifetimes_that_are_not_window_names_to_strings(lifetimes: object) -> None:
    meta = meta_of(encode(an_entry()))
    meta["lifetimes"] = lifetimes
    with pytest.raises(EntryFormatError):
        decode(json.dumps(meta).encode() + b"\nbody")


def test_an_entry_with_its_own_windows_is_floored_by_min_refresh() -> None:
    own = Fetched(b"x", "text/plain", lifetimes=Lifetimes(0.5, 0.0, 0.0), tags=("o", "t"))
    entry = value_entry(
        own,
        job="j",
        args={},
        tags=("t",),
        now=10.0,
        duration=0.1,
        fresh=60,
        stale=0,
        stale_if_error=0,
        min_refresh=2.0,
    )
    assert (entry.fresh_until, entry.stale_until, entry.retry_at) == (10.5, 12.0, 12.0)
    assert entry.tags == ("t", "o")


def test_a_304_renews_the_previous_value_keeping_body_content_type_and_etag() -> None:
    previous = an_entry(etag='W/"old"', tags=("t", "origin"), validators=('"v1"', ""))
    renewal = Fetched(b"", "", not_modified=True, tags=("origin",))
    entry = value_entry(
        renewal,
        job="tweets",
        args={"user": "bob"},
        tags=("t",),
        now=500.0,
        duration=0.01,
        fresh=60,
        stale=10,
        stale_if_error=0,
        previous=previous,
    )
    assert (entry.body, entry.content_type, entry.etag, entry.tags, entry.validators) == (
        b"body",
        "text/plain",
        'W/"old"',
        ("t", "origin"),
        ('"v1"', ""),
    )
    assert (entry.fetched_at, entry.fresh_until, entry.stale_until) == (500.0, 560.0, 570.0)
    renewal = Fetched(b"", "", not_modified=True)
    with pytest.raises(ValueError):
        value_entry(
            renewal,
            job="j",
            args={},
            tags=(),
            now=1,
            duration=0,
            fresh=1,
            stale=0,
            stale_if_error=0,
        )


def test_a_304_replaces_each_validator_only_when_it_sends_one() -> None:
    previous = an_entry(etag='W/"old"', validators=('"e1"', "Mon, 07 Nov 1994 08:49:37 GMT"))
    renewal = Fetched(b"", "", not_modified=True, validators=("", "Tue, 08 Nov 1994 08:49:37 GMT"))
    entry = value_entry(
        renewal,
        job="tweets",
        args={"user": "bob"},
        tags=(),
        now=500.0,
        duration=0.01,
        fresh=60,
        stale=0,
        stale_if_error=0,
        previous=previous,
    )
    assert entry.validators == ('"e1"', "Tue, 08 Nov 1994 08:49:37 GMT")
