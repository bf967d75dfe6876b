"""
Tests for L{refresherd.core.http_caching}: how refresherd reads what an
origin's answer says about caching it (docs/http-caching.md), against the
grammar of RFC 9111 and RFC 9110 (quoted strings, lists, repeated directives
and lines, invalid and huge numbers), each step of the freshness precedence,
C{Age}, C{Expires} and C{Date}, the RFC 5861 windows, C{no-store} and
C{private}, the validators, C{Surrogate-Key}, and each cap of L{lifetimes}.
Expected values are worked out here by hand from that page.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refresherd.core.http_caching import (
    MAX_DELTA,
    MAX_ORIGIN_TAG_BYTES,
    MAX_ORIGIN_TAGS,
    CacheHeaders,
    lifetimes,
    parse,
)
from refresherd.entry import MAX_WHY_CHARS

NOW = float(calendar.timegm((2001, 9, 9, 1, 46, 40)))  # 1_000_000_000
NOW_DATE = "Sun, 09 Sep 2001 01:46:40 GMT"
MINUTE_LATER = "Sun, 09 Sep 2001 01:47:40 GMT"
HOUR_LATER = "Sun, 09 Sep 2001 02:46:40 GMT"
EARLIER = "Sun, 09 Sep 2001 01:45:40 GMT"


def read(**headers: str | Sequence[str]) -> CacheHeaders:
    """parse() of headers named as keyword arguments (C{cache_control=...}), one line or several."""
    lines = {
        name.replace("_", "-"): [value] if isinstance(value, str) else list(value)
        for name, value in headers.items()
    }
    return parse(lines, NOW)


def fresh_of(**headers: str | Sequence[str]) -> tuple[float | None, str]:
    parsed = read(**headers)
    return parsed.fresh, parsed.fresh_from


def test_no_header_says_nothing() -> None:
    assert read() == CacheHeaders(
        fresh=None,
        fresh_from="",
        stale_while_revalidate=None,
        stale_if_error=None,
        no_store="",
        etag=None,
        last_modified=None,
        tags=(),
        tags_dropped=0,
    )


# -- The grammar of Cache-Control (RFC 9111 5.2, RFC 9110 5.6) -------------------------------


@pytest.mark.parametrize(
    ("value", "fresh"),
    [
        ("max-age=60", 60.0),
        ('max-age="60"', 60.0),  # a quoted-string value
        (r'max-age="6\0"', 60.0),  # with a quoted-pair
        ("MAX-AGE=60", 60.0),  # names are case-insensitive
        ("Max-Age=60", 60.0),
        (" max-age=60 ", 60.0),  # white space around list elements
        (",, ,max-age=60,,", 60.0),  # empty list elements
        ("public, must-revalidate, immutable, max-age=60, foo=bar, x", 60.0),  # unknown: ignored
        ('foo="a, max-age=1", max-age=60', 60.0),  # a comma inside a quoted string does not split
        (r'foo="a\", max-age=1", max-age=60', 60.0),  # nor after an escaped quote
        ('foo="a"junk, max-age=60', 60.0),  # what follows a closing quote is skipped
        ("max-age=60, max-age=30", 30.0),  # repeated: the smallest wins
        ("max-age=30, max-age=60", 30.0),
        ("max-age=0060", 60.0),  # leading zeros
        ("max-age=0000000000000000000000060", 60.0),
        ("max-age=0", 0.0),
    ],
)
def test_max_age_grammar(value: str, fresh: float) -> None:
    assert read(cache_control=value).fresh == fresh


@pytest.mark.parametrize(
    "value",
    [
        "max-age=-1",  # negative
        "max-age=abc",  # not digits
        "max-age=",  # empty
        "max-age",  # no value at all
        'max-age=""',  # an empty quoted string
        "max-age=1.5",  # not an integer
        "max-age=60 junk",
        "max-age= 60",  # white space after "=" is not a token
        "max-age=\uff16\uff10",  # fullwidth digits are not DIGIT
        "max-age=\u0660",  # nor Arabic-Indic ones
        'max-age="60',  # a quoted string never closed
        "max-age=60, max-age=x",  # one invalid among valid ones
    ],
)
def test_an_invalid_max_age_means_fresh_0(value: str) -> None:
    assert fresh_of(cache_control=value) == (0.0, "Cache-Control max-age (invalid)")


def test_an_invalid_s_maxage_means_fresh_0_even_beside_a_valid_max_age() -> None:
    assert fresh_of(cache_control="s-maxage=x, max-age=60") == (
        0.0,
        "Cache-Control s-maxage (invalid)",
    )


@pytest.mark.parametrize(
    ("value", "fresh"),
    [
        ("max-age=2147483647", 2147483647.0),
        ("max-age=2147483648", float(MAX_DELTA)),
        ("max-age=2147483649", float(MAX_DELTA)),
        ("max-age=99999999999999999999999999999999", float(MAX_DELTA)),
        ("max-age=" + "9" * 10_000, float(MAX_DELTA)),  # past int()'s digit limit: no error
    ],
)
def test_huge_numbers_are_max_delta(value: str, fresh: float) -> None:
    assert read(cache_control=value).fresh == fresh


def test_huge_number_is_named_as_max_delta() -> None:
    assert (
        read(cache_control="max-age=" + "9" * 40).fresh_from == "Cache-Control max-age=2147483648"
    )


def test_the_lines_of_one_header_are_one_list() -> None:
    assert fresh_of(cache_control=["max-age=60", "s-maxage=30"]) == (
        30.0,
        "Cache-Control s-maxage=30",
    )
    assert read(cache_control=["max-age=60", "max-age=20"]).fresh == 20.0
    assert read(cache_control=["max-age=60", "no-store"]).no_store == "Cache-Control no-store"


def test_a_quoted_string_does_not_span_lines() -> None:
    """Each line is parsed on its own: an open quote in one line cannot hide the next line."""
    assert read(cache_control=['foo="a', "no-store"]).no_store == "Cache-Control no-store"
    assert read(cache_control=['foo="a', 'max-age=5, x="']).fresh == 5.0


def test_a_quoted_string_never_closed_does_not_hide_what_follows() -> None:
    assert read(cache_control='foo="abc, no-store').no_store == "Cache-Control no-store"
    assert read(cache_control='foo="a\\, no-store').no_store == "Cache-Control no-store"


def test_directives_inside_a_quoted_string_are_not_directives() -> None:
    assert read(cache_control='foo="no-store, private", max-age=60').no_store == ""


# -- Freshness: each step of the precedence ----------------------------------------------------


def test_surrogate_control_max_age_comes_first() -> None:
    assert fresh_of(
        surrogate_control="max-age=300",
        cache_control="no-cache, s-maxage=10, max-age=0",
        expires="0",
    ) == (300.0, "Surrogate-Control max-age=300")


def test_surrogate_control_max_age_invalid_is_fresh_0_and_still_overrides() -> None:
    assert fresh_of(surrogate_control="max-age=soon", cache_control="max-age=60") == (
        0.0,
        "Surrogate-Control max-age (invalid)",
    )


def test_surrogate_control_without_max_age_leaves_freshness_to_cache_control() -> None:
    assert fresh_of(surrogate_control="stale-while-revalidate=5", cache_control="max-age=60") == (
        60.0,
        "Cache-Control max-age=60",
    )


def test_surrogate_control_no_cache_is_not_read() -> None:
    assert read(surrogate_control="no-cache", cache_control="max-age=60").fresh == 60.0


@pytest.mark.parametrize("value", ["s-maxage=30, max-age=60", "max-age=60, s-maxage=30"])
def test_s_maxage_wins_over_max_age_when_shorter(value: str) -> None:
    assert fresh_of(cache_control=value) == (30.0, "Cache-Control s-maxage=30")


def test_s_maxage_wins_over_max_age_when_longer() -> None:
    assert fresh_of(cache_control="max-age=0, s-maxage=120") == (
        120.0,
        "Cache-Control s-maxage=120",
    )


def test_max_age_wins_over_expires() -> None:
    assert fresh_of(cache_control="max-age=60", expires=HOUR_LATER, date=NOW_DATE) == (
        60.0,
        "Cache-Control max-age=60",
    )


@pytest.mark.parametrize(
    "value",
    [
        "no-cache",
        "NO-CACHE",
        'no-cache="Set-Cookie"',
        'no-cache="Set-Cookie, Authorization"',
        "no-cache=Set-Cookie",
        "s-maxage=60, max-age=60, no-cache",  # conflicting: the most restrictive
        "no-cache, s-maxage=60",
    ],
)
def test_no_cache_means_fresh_0(value: str) -> None:
    assert fresh_of(cache_control=value, expires=HOUR_LATER) == (0.0, "Cache-Control no-cache")


def test_expires_minus_date() -> None:
    assert fresh_of(expires=HOUR_LATER, date=MINUTE_LATER) == (3540.0, "Expires")


def test_expires_without_date_is_counted_from_now() -> None:
    assert fresh_of(expires=HOUR_LATER) == (3600.0, "Expires")


@pytest.mark.parametrize(
    "date", ["yesterday", "", "Sun, 09 Sep 2001 01:47:40 UTC", [MINUTE_LATER, MINUTE_LATER]]
)
def test_expires_with_an_invalid_date_is_counted_from_now(date: str | list[str]) -> None:
    assert fresh_of(expires=HOUR_LATER, date=date) == (3600.0, "Expires")


def test_expires_in_the_past_means_fresh_0() -> None:
    assert fresh_of(expires=EARLIER) == (0.0, "Expires (in the past)")
    assert fresh_of(expires=MINUTE_LATER, date=HOUR_LATER) == (0.0, "Expires (in the past)")
    assert fresh_of(expires=NOW_DATE, date=NOW_DATE) == (0.0, "Expires (in the past)")


@pytest.mark.parametrize(
    "expires",
    [
        "0",
        "-1",
        "",
        "never",
        "2001-09-09T02:46:40Z",
        "Sun, 09 Sep 2001 02:46:40 +0000",
        "sun, 09 sep 2001 02:46:40 gmt",
        [HOUR_LATER, HOUR_LATER],  # several lines: RFC 9111 4.2.1 allows treating it as stale
    ],
)
def test_an_invalid_expires_means_fresh_0(expires: str | list[str]) -> None:
    assert fresh_of(expires=expires, date=NOW_DATE) == (0.0, "Expires (invalid)")


@pytest.mark.parametrize(
    ("expires", "fresh"),
    [
        (HOUR_LATER, 3600.0),  # IMF-fixdate
        ("Sunday, 09-Sep-01 02:46:40 GMT", 3600.0),  # rfc850-date
        ("Sun Sep  9 02:46:40 2001", 3600.0),  # asctime-date, day padded with a space
        ("Sun Sep 09 02:46:40 2001", 3600.0),
        ("Thursday, 01-Jan-60 00:00:00 GMT", 0.0),  # 2060 is > 50 years ahead: 1960, past
        ("Monday, 01-Jan-35 00:00:00 GMT", calendar.timegm((2035, 1, 1, 0, 0, 0)) - NOW),  # 2035
        (f" {HOUR_LATER}\t", 3600.0),  # white space around a field value
    ],
)
def test_the_three_forms_of_http_date(expires: str, fresh: float) -> None:
    assert read(expires=expires).fresh == fresh


@pytest.mark.parametrize(
    "date",
    [
        "Sun, 30 Feb 2001 02:46:40 GMT",  # no such day
        "Sun, 09 Sep 2001 24:00:00 GMT",
        "Sun, 09 Sep 2001 02:60:00 GMT",
        "Sun, 09 Sep 2001 02:46:60 GMT",
        "Sun, 00 Sep 2001 02:46:40 GMT",
        "Sun, 09 Sep 0000 02:46:40 GMT",
        "Sun, 9 Sep 2001 02:46:40 GMT",  # the day has two digits
        "Sun,  09 Sep 2001 02:46:40 GMT",
        "Sunday, 09 Sep 2001 02:46:40 GMT",
        "Sun, 09-Sep-01 02:46:40 GMT",
        "Sun, 09 Sep 2001 02:46:40",
    ],
)
def test_invalid_http_dates(date: str) -> None:
    assert read(last_modified=date).last_modified is None
    assert read(expires=date).fresh == 0.0


# -- Age -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fresh", "fresh_from"),
    [
        ({"cache_control": "max-age=60", "age": "10"}, 50.0, "Cache-Control max-age=60, Age 10"),
        ({"cache_control": "s-maxage=60", "age": "10"}, 50.0, "Cache-Control s-maxage=60, Age 10"),
        (
            {"surrogate_control": "max-age=60", "age": "10"},
            50.0,
            "Surrogate-Control max-age=60, Age 10",
        ),
        ({"expires": HOUR_LATER, "age": "600"}, 3000.0, "Expires, Age 600"),
        ({"cache_control": "max-age=60", "age": "60"}, 0.0, "Cache-Control max-age=60, Age 60"),
        ({"cache_control": "max-age=60", "age": "600"}, 0.0, "Cache-Control max-age=60, Age 600"),
        (
            {"cache_control": "max-age=60", "age": "9" * 50},
            0.0,
            f"Cache-Control max-age=60, Age {MAX_DELTA}",
        ),
        ({"cache_control": "max-age=60", "age": "0"}, 60.0, "Cache-Control max-age=60"),
        (
            {"cache_control": "max-age=60", "age": "10, 20"},
            40.0,
            "Cache-Control max-age=60, Age 20",
        ),
        (
            {"cache_control": "max-age=60", "age": ["20", "10"]},
            40.0,
            "Cache-Control max-age=60, Age 20",
        ),
        (
            {"cache_control": "max-age=60", "age": ["x", "10"]},
            50.0,
            "Cache-Control max-age=60, Age 10",
        ),
        ({"cache_control": "no-cache", "age": "10"}, 0.0, "Cache-Control no-cache"),
    ],
)
def test_age_is_subtracted(
    headers: Mapping[str, str | list[str]], fresh: float, fresh_from: str
) -> None:
    assert fresh_of(**headers) == (fresh, fresh_from)


@pytest.mark.parametrize("age", ["-10", "1.5", "ten", "", " ", '"10"', "\uff11\uff10"])
def test_an_invalid_age_is_ignored(age: str) -> None:
    assert fresh_of(cache_control="max-age=60", age=age) == (60.0, "Cache-Control max-age=60")


def test_age_alone_says_nothing() -> None:
    assert fresh_of(age="10") == (None, "")


# -- stale-while-revalidate and stale-if-error (RFC 5861) ------------------------------------------


def test_stale_windows_from_cache_control() -> None:
    parsed = read(cache_control="max-age=60, stale-while-revalidate=30, stale-if-error=600")
    assert (parsed.stale_while_revalidate, parsed.stale_if_error) == (30.0, 600.0)
    assert parsed.stale_while_revalidate_from == "Cache-Control stale-while-revalidate=30"
    assert parsed.stale_if_error_from == "Cache-Control stale-if-error=600"


def test_stale_windows_from_surrogate_control_first_each_on_its_own() -> None:
    parsed = read(
        surrogate_control="stale-while-revalidate=5",
        cache_control="stale-while-revalidate=30, stale-if-error=600",
    )
    assert (parsed.stale_while_revalidate, parsed.stale_if_error) == (5.0, 600.0)
    assert parsed.stale_while_revalidate_from == "Surrogate-Control stale-while-revalidate=5"
    assert parsed.stale_if_error_from == "Cache-Control stale-if-error=600"


def test_surrogate_control_stale_if_error_wins_even_when_longer() -> None:
    parsed = read(surrogate_control="stale-if-error=900", cache_control="stale-if-error=60")
    assert parsed.stale_if_error == 900.0


@pytest.mark.parametrize(
    ("value", "swr"),
    [
        ('stale-while-revalidate="30"', 30.0),
        ("stale-while-revalidate=30, stale-while-revalidate=10", 10.0),
        ("Stale-While-Revalidate=30", 30.0),
        ("stale-while-revalidate", 0.0),
        ("stale-while-revalidate=-5", 0.0),
        ("stale-while-revalidate=5s", 0.0),
        ("stale-while-revalidate=30, stale-while-revalidate=x", 0.0),
        ("stale-while-revalidate=" + "9" * 30, float(MAX_DELTA)),
    ],
)
def test_stale_while_revalidate_grammar(value: str, swr: float) -> None:
    parsed = read(cache_control=f"max-age=60, {value}")
    assert parsed.stale_while_revalidate == swr
    assert parsed.fresh == 60.0  # an invalid stale window does not touch freshness


def test_an_invalid_stale_if_error_is_0() -> None:
    parsed = read(cache_control="stale-if-error=later, stale-while-revalidate=30")
    assert (parsed.stale_if_error, parsed.stale_while_revalidate) == (0.0, 30.0)
    assert parsed.stale_if_error_from == "Cache-Control stale-if-error (invalid)"


def test_the_stale_windows_do_not_need_a_freshness() -> None:
    parsed = read(cache_control="stale-if-error=60")
    assert (parsed.fresh, parsed.stale_if_error, parsed.stale_while_revalidate) == (
        None,
        60.0,
        None,
    )


# -- no-store and private ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"cache_control": "no-store"}, "Cache-Control no-store"),
        ({"cache_control": "NO-STORE, max-age=600"}, "Cache-Control no-store"),
        ({"cache_control": "private"}, "Cache-Control private"),
        ({"cache_control": 'private="Set-Cookie"'}, "Cache-Control private"),
        ({"cache_control": "public, private, s-maxage=60"}, "Cache-Control private"),
        ({"cache_control": "private, no-store"}, "Cache-Control no-store"),
        ({"surrogate_control": "no-store"}, "Surrogate-Control no-store"),
        (
            {"surrogate_control": "max-age=600, no-store", "cache_control": "max-age=60"},
            "Surrogate-Control no-store",
        ),
        ({"surrogate_control": "max-age=600", "cache_control": "private"}, "Cache-Control private"),
        ({"cache_control": ["max-age=60", "no-store"]}, "Cache-Control no-store"),
    ],
)
def test_not_stored(headers: Mapping[str, str | list[str]], why: str) -> None:
    assert read(**headers).no_store == why


@pytest.mark.parametrize(
    "headers",
    [
        {"cache_control": "public, max-age=60"},
        {"surrogate_control": "private"},  # private is read in Cache-Control only
        {"cache_control": "no-storage, privately"},
        {"pragma": "no-store"},
        {"cache_control": 'no-cache="no-store"'},
    ],
)
def test_stored(headers: Mapping[str, str]) -> None:
    assert read(**headers).no_store == ""


# -- ETag and Last-Modified --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "kept"),
    [
        ('"abc"', '"abc"'),
        ('W/"abc"', 'W/"abc"'),
        ('""', '""'),
        (' "abc" ', '"abc"'),  # white space around a field value
        ('"' + "x" * 254 + '"', '"' + "x" * 254 + '"'),  # 256 characters
        ('"' + "x" * 255 + '"', None),  # 257
        ("abc", None),
        ('w/"abc"', None),  # W/ is case-sensitive
        ('"a b"', None),
        ('"a"b"', None),
        ('"abc', None),
        ('"abc", "def"', None),  # a list: not one entity-tag
        ('"caf\xe9"', None),  # obs-text: not kept
        ("", None),
    ],
)
def test_etag(etag: str, kept: str | None) -> None:
    assert read(etag=etag).etag == kept


def test_several_etag_lines_mean_no_etag() -> None:
    assert read(etag=['"a"', '"a"']).etag is None


@pytest.mark.parametrize(
    "value",
    [NOW_DATE, "Sunday, 09-Sep-01 01:46:40 GMT", "Sun Sep  9 01:46:40 2001"],
)
def test_last_modified_is_kept_as_sent(value: str) -> None:
    assert read(last_modified=value).last_modified == value


def test_last_modified_is_kept_without_surrounding_white_space() -> None:
    assert read(last_modified=f"  {NOW_DATE}\t").last_modified == NOW_DATE


@pytest.mark.parametrize(
    "value", ["0", "yesterday", "1000000000", [NOW_DATE, NOW_DATE], NOW_DATE + " GMT"]
)
def test_an_invalid_last_modified_is_not_kept(value: str | list[str]) -> None:
    assert read(last_modified=value).last_modified is None


# -- Surrogate-Key -----------------------------------------------------------------------------


def test_tags_are_split_on_spaces_and_tabs_across_lines() -> None:
    parsed = read(surrogate_key=["user:1  post:7\tpost:8 ", "\tuser:1 feed"])
    assert (parsed.tags, parsed.tags_dropped) == (("user:1", "post:7", "post:8", "feed"), 0)


def test_commas_do_not_split_tags() -> None:
    assert read(surrogate_key="a,b c").tags == ("a,b", "c")


def test_at_most_max_origin_tags_are_kept() -> None:
    names = [f"t{i}" for i in range(MAX_ORIGIN_TAGS + 5)]
    parsed = read(surrogate_key=" ".join(names + names[:3]))
    assert parsed.tags == tuple(names[:MAX_ORIGIN_TAGS])
    assert parsed.tags_dropped == 5


def test_tags_over_max_origin_tag_bytes_are_dropped() -> None:
    longest = "x" * MAX_ORIGIN_TAG_BYTES
    parsed = read(surrogate_key=f"a {longest}y {longest} b")
    assert (parsed.tags, parsed.tags_dropped) == (("a", longest, "b"), 1)


@pytest.mark.parametrize("tag", ["caf\xe9", "a\x7fb", "a\x0bb", "a\x00b", "a\nb", "\u263a"])
def test_tags_that_are_not_printable_ascii_are_dropped(tag: str) -> None:
    parsed = read(surrogate_key=f"ok {tag} fine")
    assert (parsed.tags, parsed.tags_dropped) == (("ok", "fine"), 1)


# -- lifetimes: the job's values are defaults and caps -------------------------------------------


def windows(
    headers: CacheHeaders,
    fresh: float = 30.0,
    max_fresh: float = 60.0,
    stale: float = 60.0,
    stale_if_error: float = 600.0,
) -> tuple[float, float, float, Mapping[str, str]]:
    found = lifetimes(
        headers, fresh=fresh, max_fresh=max_fresh, stale=stale, stale_if_error=stale_if_error
    )
    return found.fresh, found.stale, found.stale_if_error, found.why


def test_without_headers_the_job_decides() -> None:
    assert windows(read()) == (
        30.0,
        60.0,
        600.0,
        {
            "fresh": "the job (no header)",
            "stale": "the job (no header)",
            "stale_if_error": "the job (no header)",
        },
    )


def test_the_jobs_fresh_is_capped_by_max_fresh_too() -> None:
    fresh, _, _, why = windows(read(), fresh=90.0, max_fresh=60.0)
    assert (fresh, why["fresh"]) == (60.0, "the job (no header), capped by max_fresh (60s)")


def test_the_origins_fresh_under_max_fresh() -> None:
    fresh, _, _, why = windows(read(cache_control="s-maxage=45"))
    assert (fresh, why["fresh"]) == (45.0, "Cache-Control s-maxage=45")


def test_the_origins_fresh_may_be_longer_than_the_jobs_fresh() -> None:
    assert windows(read(cache_control="max-age=50"), fresh=30.0, max_fresh=60.0)[0] == 50.0


def test_the_origins_fresh_is_capped_by_max_fresh() -> None:
    fresh, _, _, why = windows(read(cache_control="s-maxage=120"), max_fresh=60.0)
    assert (fresh, why["fresh"]) == (60.0, "Cache-Control s-maxage=120, capped by max_fresh (60s)")


def test_the_origins_fresh_0_stands() -> None:
    fresh, _, _, why = windows(read(cache_control="no-cache"), fresh=30.0)
    assert (fresh, why["fresh"]) == (0.0, "Cache-Control no-cache")


@pytest.mark.parametrize(
    ("cap", "shown"), [(1.5, "1.5s"), (0.25, "0.25s"), (1234567.5, "1234567.5s"), (60.0, "60s")]
)
def test_caps_are_named_to_the_millisecond(cap: float, shown: str) -> None:
    why = windows(read(cache_control="max-age=99999999"), max_fresh=cap)[3]["fresh"]
    assert why == f"Cache-Control max-age=99999999, capped by max_fresh ({shown})"


def test_stale_while_revalidate_under_and_over_the_jobs_stale() -> None:
    _, stale, _, why = windows(read(cache_control="stale-while-revalidate=30"), stale=60.0)
    assert (stale, why["stale"]) == (30.0, "Cache-Control stale-while-revalidate=30")
    _, stale, _, why = windows(read(cache_control="stale-while-revalidate=300"), stale=60.0)
    assert (stale, why["stale"]) == (
        60.0,
        "Cache-Control stale-while-revalidate=300, capped by stale (60s)",
    )


def test_stale_if_error_under_and_over_the_jobs_stale_if_error() -> None:
    headers = read(surrogate_control="stale-if-error=120")
    _, _, error, why = windows(headers, stale_if_error=600.0)
    assert (error, why["stale_if_error"]) == (120.0, "Surrogate-Control stale-if-error=120")
    _, _, error, why = windows(headers, stale_if_error=100.0)
    assert (error, why["stale_if_error"]) == (
        100.0,
        "Surrogate-Control stale-if-error=120, capped by stale_if_error (100s)",
    )


def test_a_job_without_stale_windows_gets_none_whatever_the_origin_says() -> None:
    headers = read(cache_control="max-age=60, stale-while-revalidate=30, stale-if-error=600")
    assert windows(headers, stale=0.0, stale_if_error=0.0)[1:3] == (0.0, 0.0)


def test_the_examples_of_the_docs_page() -> None:
    """The lines docs/http-caching.md shows operators are the ones lifetimes() writes."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "http-caching.md").read_text()
    shown = [
        windows(read(cache_control="s-maxage=120"), max_fresh=60.0)[3]["fresh"],
        windows(read(cache_control="max-age=60", age="10"))[3]["fresh"],
        windows(read(surrogate_control="stale-while-revalidate=30"))[3]["stale"],
        windows(read(cache_control="max-age=x"))[3]["fresh"],
        windows(read())[3]["fresh"],
    ]
    assert shown == [
        "Cache-Control s-maxage=120, capped by max_fresh (60s)",
        "Cache-Control max-age=60, Age 10",
        "Surrogate-Control stale-while-revalidate=30",
        "Cache-Control max-age (invalid)",
        "the job (no header)",
    ]
    for line in shown:
        assert f"| `{line}` |" in page


# -- Properties: untrusted input ------------------------------------------------------------------

NAMES = (
    "cache-control",
    "surrogate-control",
    "expires",
    "date",
    "age",
    "etag",
    "last-modified",
    "surrogate-key",
)
# Text made of the pieces the grammar cares about, so that the examples are near-misses.
PIECES = st.sampled_from(
    [
        "max-age",
        "s-maxage",
        "no-cache",
        "no-store",
        "private",
        "stale-while-revalidate",
        "stale-if-error",
        "=",
        ",",
        '"',
        "\\",
        " ",
        "\t",
        "W/",
        "0",
        "60",
        "-1",
        "99999999999999999999",
        "GMT",
        "Sun, 09 Sep 2001 01:46:40 GMT",
        "Sunday, 09-Sep-01",
        "\x00",
        "\xe9",
        "\u263a",
    ]
)
GRAMMAR_TEXT = st.lists(PIECES, max_size=12).map("".join)
VALUES = st.one_of(st.text(max_size=60), GRAMMAR_TEXT)
HEADERS = st.dictionaries(
    st.one_of(st.sampled_from(NAMES), st.text(max_size=10)),
    st.lists(VALUES, max_size=4),
    max_size=8,
)
TIMES = st.floats(min_value=0.0, max_value=4e9, allow_nan=False)
JOB_SECONDS = st.floats(min_value=0.0, max_value=1e10, allow_nan=False)


@given(HEADERS, TIMES)
def test_parse_never_raises_and_stays_in_bounds(headers: dict[str, list[str]], now: float) -> None:
    parsed = parse(headers, now)
    assert (parsed.fresh is None) == (parsed.fresh_from == "")
    for window in (parsed.fresh, parsed.stale_while_revalidate, parsed.stale_if_error):
        assert window is None or 0.0 <= window <= MAX_DELTA
    assert len(parsed.tags) <= MAX_ORIGIN_TAGS
    assert len(set(parsed.tags)) == len(parsed.tags)
    for tag in parsed.tags:
        assert 0 < len(tag) <= MAX_ORIGIN_TAG_BYTES
        assert all(0x21 <= ord(char) <= 0x7E for char in tag)
    assert parsed.tags_dropped >= 0
    assert parsed.etag is None or len(parsed.etag) <= 256


@given(HEADERS, TIMES, JOB_SECONDS, JOB_SECONDS, JOB_SECONDS, JOB_SECONDS)
def test_lifetimes_never_exceed_the_caps_nor_go_negative(
    headers: dict[str, list[str]],
    now: float,
    fresh: float,
    max_fresh: float,
    stale: float,
    stale_if_error: float,
) -> None:
    found = lifetimes(
        parse(headers, now),
        fresh=fresh,
        max_fresh=max_fresh,
        stale=stale,
        stale_if_error=stale_if_error,
    )
    assert 0.0 <= found.fresh <= max_fresh
    assert 0.0 <= found.stale <= stale
    assert 0.0 <= found.stale_if_error <= stale_if_error
    assert set(found.why) == {"fresh", "stale", "stale_if_error"}
    for line in found.why.values():  # what an entry may carry
        assert 0 < len(line) <= MAX_WHY_CHARS and line.isprintable() and line.isascii()


@given(
    st.lists(VALUES, max_size=4),
    st.sampled_from(["cache-control", "surrogate-control"]),
    st.sampled_from(["no-store", "NO-STORE", " no-store ", "No-Store"]),
    st.integers(min_value=0, max_value=10),
    st.sampled_from(["line", "first", "last"]),
    HEADERS,
    TIMES,
)
def test_adding_no_store_anywhere_means_not_stored(
    lines: list[str],
    name: str,
    directive: str,
    where: int,
    how: str,
    others: dict[str, list[str]],
    now: float,
) -> None:
    """A C{no-store} added as a list element anywhere, whatever the lines around it hold."""
    lines = list(lines)
    if how == "line" or not lines:
        lines.insert(where % (len(lines) + 1), directive)
    else:
        at = where % len(lines)
        if how == "first":
            lines[at] = f"{directive},{lines[at]}"
        else:
            lines[at] = f"{lines[at]},{directive}"
    headers = {**others, name: lines}
    assert parse(headers, now).no_store != ""
