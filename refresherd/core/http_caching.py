"""
What an origin's HTTP answer says about caching it, as pure functions
(docs/http-caching.md).

L{parse} reads the headers of one answer: how long it stays fresh
(C{Surrogate-Control}, C{Cache-Control}, C{Expires}, C{Date}, C{Age}), how
long it may be served stale (C{stale-while-revalidate}, C{stale-if-error}),
whether it may be stored at all (C{no-store}, C{private}), its validators
(C{ETag}, C{Last-Modified}) and its C{Surrogate-Key} tags.  L{lifetimes}
then bounds what the origin said by the job's own windows, which are both
defaults and caps.

Every header value is untrusted: nothing here raises on any string.  Where
RFC 9111 or RFC 5861 leave a choice, the safer reading wins: a shorter
lifetime, not storing, not revalidating.  Nothing here does I/O or knows
Twisted.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Mapping, Sequence

import attrs

from refresherd.entry import MAX_LAST_MODIFIED_CHARS, Lifetimes, is_entity_tag

__all__ = [
    "MAX_DELTA",
    "MAX_ORIGIN_TAGS",
    "MAX_ORIGIN_TAG_BYTES",
    "CacheHeaders",
    "Lifetimes",
    "lifetimes",
    "parse",
]

MAX_DELTA = 2**31
"""RFC 9111 1.2.2: a larger delta-seconds is taken as this."""
MAX_ORIGIN_TAGS = 64
"""C{Surrogate-Key} tags kept per answer."""
MAX_ORIGIN_TAG_BYTES = 256
"""Longer C{Surrogate-Key} tags are dropped."""
HEADERS = (
    "surrogate-control",
    "cache-control",
    "expires",
    "date",
    "age",
    "etag",
    "last-modified",
    "surrogate-key",
)
"""The headers L{parse} reads (lower case): the only ones a fetcher need give it."""

_OWS = " \t"
_DIGITS = re.compile(r"[0-9]+")
_TAG = re.compile(r"[\x21-\x7e]+")
_TAG_SEPARATORS = re.compile(r"[ \t]+")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME = "(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_DATE_FORMS = (
    # RFC 9110 5.6.7: the three forms of an HTTP-date, case-sensitive: IMF-fixdate,
    # rfc850-date (a two-digit year) and asctime-date (the day may be padded with a space).
    re.compile(
        rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) "
        rf"{_TIME} GMT"
    ),
    re.compile(
        r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
        rf"(?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT"
    ),
    re.compile(
        rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} (?P<day>[0-9 ][0-9]) {_TIME} "
        r"(?P<year>[0-9]{4})"
    ),
)


@attrs.frozen
class CacheHeaders:
    """
    What an origin's answer says about caching it: parsed, not yet bounded by
    the job (L{lifetimes} does that).
    """

    fresh: float | None
    """Seconds it stays fresh from now (C{Age} subtracted, never below 0);
    L{None} when no header says."""
    fresh_from: str
    """Which header gave C{fresh}, for people: C{"Surrogate-Control
    max-age=60"}, C{"Cache-Control s-maxage=60"}, C{"Cache-Control
    max-age=60"}, C{"Cache-Control no-cache"}, C{"Expires"}, with C{", Age
    10"} appended when an C{Age} was subtracted; C{""} when C{fresh} is
    L{None}."""
    stale_while_revalidate: float | None
    stale_if_error: float | None
    no_store: str
    """C{""}, or why the answer must not be stored: C{"Cache-Control
    no-store"}, C{"Cache-Control private"} or C{"Surrogate-Control
    no-store"}."""
    etag: str | None
    """The C{ETag} if it is one valid entity-tag (strong or C{W/}) of at most
    256 printable ASCII characters."""
    last_modified: str | None
    """The C{Last-Modified} as sent (without surrounding white space) if it is
    one valid HTTP-date."""
    tags: tuple[str, ...]
    """C{Surrogate-Key} tags, in order, deduplicated, bounded."""
    tags_dropped: int
    """C{Surrogate-Key} tags left out: past L{MAX_ORIGIN_TAGS}, longer than
    L{MAX_ORIGIN_TAG_BYTES}, or not printable ASCII."""
    stale_while_revalidate_from: str = ""
    """Which header gave C{stale_while_revalidate}, as C{fresh_from}."""
    stale_if_error_from: str = ""
    """Which header gave C{stale_if_error}, as C{fresh_from}."""


@attrs.frozen
class _Value:
    """One directive's value in seconds and how to name it, e.g. C{max-age=60}."""

    seconds: float
    text: str


def _elements(line: str) -> Iterable[tuple[str, str | None]]:
    """
    The directives of one field line (RFC 9111 5.2, RFC 9110 5.6): each a
    lower-case name and its value (a token or an unquoted quoted-string), or
    L{None} without C{=}.  Commas inside a quoted string do not split; empty
    elements are skipped; what follows a closing quote up to the next comma
    is ignored; a quoted string never closed is read as a token up to the
    next comma, so that it cannot hide the directives after it.
    """
    i, end = 0, len(line)
    while i < end:
        comma = line.find(",", i)
        if comma < 0:
            comma = end
        equals = line.find("=", i, comma)
        if equals < 0:
            name = line[i:comma].strip(_OWS).lower()
            if name:
                yield name, None
            i = comma + 1
            continue
        name = line[i:equals].strip(_OWS).lower()
        value, i = _value(line, equals + 1, comma)
        if name:
            yield name, value


def _value(line: str, start: int, comma: int) -> tuple[str, int]:
    """
    The value starting at C{start} and where the next element starts:
    a quoted string unescaped, else the text up to C{comma} without its
    trailing white space.
    """
    if start < len(line) and line[start] == '"':
        chars: list[str] = []
        i = start + 1
        while i < len(line):
            char = line[i]
            if char == '"':
                after = line.find(",", i + 1)
                return "".join(chars), (len(line) if after < 0 else after) + 1
            if char == "\\" and i + 1 < len(line):
                i += 1
                char = line[i]
            chars.append(char)
            i += 1
    return line[start:comma].rstrip(_OWS), comma + 1


def _directives(lines: Sequence[str]) -> dict[str, list[str | None]]:
    """Every line's directives: each name to its values, in order."""
    found: dict[str, list[str | None]] = {}
    for line in lines:
        for name, value in _elements(line):
            found.setdefault(name, []).append(value)
    return found


def _delta(value: str | None) -> int | None:
    """A delta-seconds (RFC 9111 1.2.2), at most L{MAX_DELTA}; L{None} if it is not one."""
    if value is None or _DIGITS.fullmatch(value) is None:
        return None
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(MAX_DELTA)):
        return MAX_DELTA
    return min(int(digits), MAX_DELTA)


def _smallest(header: str, name: str, values: list[str | None]) -> _Value:
    """
    The smallest of a directive's values (repeated with different values, the
    shortest lifetime wins); an invalid one counts as 0.
    """
    deltas = [_delta(value) for value in values]
    valid = [delta for delta in deltas if delta is not None]
    if len(valid) < len(deltas):
        return _Value(0.0, f"{header} {name} (invalid)")
    return _Value(float(min(valid)), f"{header} {name}={min(valid)}")


def _single(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The value of a header sent once, without surrounding white space; L{None} otherwise."""
    lines = headers.get(name, ())
    if len(lines) != 1:
        return None
    return lines[0].strip(_OWS)


def _http_date(value: str, now: float) -> float | None:
    """
    The Unix time of C{value} if it is an HTTP-date in one of the three forms
    of RFC 9110 5.6.7 (IMF-fixdate, rfc850-date, asctime-date), else L{None}.
    A two-digit year more than 50 years after C{now}'s year is taken in the
    century before.
    """
    if len(value) > MAX_LAST_MODIFIED_CHARS:
        return None
    for form in _DATE_FORMS:
        if match := form.fullmatch(value):
            break
    else:
        return None
    year = int(match["year"])
    if len(match["year"]) == 2:
        year = _full_year(year, now)
    month, day = _MONTHS[match["month"]], int(match["day"])
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def _full_year(short: int, now: float) -> int:
    """RFC 9110 5.6.7: the year of a two-digit one, at most 50 years after C{now}'s."""
    try:
        this_year = time.gmtime(now).tm_year
    except (ValueError, OverflowError, OSError):
        this_year = 2000
    year = this_year - this_year % 100 + short
    return year - 100 if year > this_year + 50 else year


def _age(lines: Sequence[str]) -> int:
    """
    The C{Age} in seconds: the largest valid delta-seconds among its members
    (RFC 9111 5.1 says the first; the largest gives the shorter lifetime), 0
    if there is none.
    """
    deltas = (_delta(value.strip(_OWS)) for line in lines for value in line.split(","))
    return max((delta for delta in deltas if delta is not None), default=0)


def _origin_fresh(
    headers: Mapping[str, Sequence[str]],
    surrogate: dict[str, list[str | None]],
    control: dict[str, list[str | None]],
    now: float,
) -> _Value | None:
    """
    The freshness the headers give, before C{Age}: the first step of the
    precedence that applies (C{Surrogate-Control} C{max-age}; C{Cache-Control}
    C{no-cache}, C{s-maxage}, C{max-age}; C{Expires}).
    """
    if "max-age" in surrogate:
        return _smallest("Surrogate-Control", "max-age", surrogate["max-age"])
    if "no-cache" in control:
        return _Value(0.0, "Cache-Control no-cache")
    for name in ("s-maxage", "max-age"):
        if name in control:
            return _smallest("Cache-Control", name, control[name])
    if "expires" not in headers:
        return None
    expires = _single(headers, "expires")
    expires_at = None if expires is None else _http_date(expires, now)
    if expires_at is None:
        return _Value(0.0, "Expires (invalid)")
    date = _single(headers, "date")
    date_at = None if date is None else _http_date(date, now)
    lifetime = expires_at - (now if date_at is None else date_at)
    if lifetime <= 0:
        return _Value(0.0, "Expires (in the past)")
    return _Value(lifetime, "Expires")


def _fresh(
    headers: Mapping[str, Sequence[str]],
    surrogate: dict[str, list[str | None]],
    control: dict[str, list[str | None]],
    now: float,
) -> _Value | None:
    """The freshness the headers give from now: L{_origin_fresh} minus C{Age}, never below 0."""
    given = _origin_fresh(headers, surrogate, control, now)
    if given is None:
        return None
    age = _age(headers.get("age", ()))
    if age <= 0 or given.seconds <= 0:
        return given
    return _Value(max(0.0, given.seconds - age), f"{given.text}, Age {age}")


def _stale(
    name: str, surrogate: dict[str, list[str | None]], control: dict[str, list[str | None]]
) -> _Value | None:
    """An RFC 5861 window: from C{Surrogate-Control} if it has C{name}, else C{Cache-Control}."""
    if name in surrogate:
        return _smallest("Surrogate-Control", name, surrogate[name])
    if name in control:
        return _smallest("Cache-Control", name, control[name])
    return None


def _no_store(surrogate: dict[str, list[str | None]], control: dict[str, list[str | None]]) -> str:
    """Why the answer must not be stored, or C{""}."""
    if "no-store" in control:
        return "Cache-Control no-store"
    if "private" in control:
        return "Cache-Control private"
    if "no-store" in surrogate:
        return "Surrogate-Control no-store"
    return ""


def _etag(headers: Mapping[str, Sequence[str]]) -> str | None:
    etag = _single(headers, "etag")
    return etag if etag is not None and is_entity_tag(etag) else None


def _last_modified(headers: Mapping[str, Sequence[str]], now: float) -> str | None:
    value = _single(headers, "last-modified")
    if value is None or _http_date(value, now) is None:
        return None
    return value


def _tags(lines: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """
    The C{Surrogate-Key} tags: split on spaces and tabs across every line,
    the first L{MAX_ORIGIN_TAGS} distinct printable ASCII ones of at most
    L{MAX_ORIGIN_TAG_BYTES}; and how many were left out.
    """
    kept: list[str] = []
    seen: set[str] = set()
    dropped = 0
    for line in lines:
        for tag in _TAG_SEPARATORS.split(line):
            if not tag or tag in seen:
                continue
            seen.add(tag)
            if (
                len(tag) > MAX_ORIGIN_TAG_BYTES
                or _TAG.fullmatch(tag) is None
                or len(kept) >= MAX_ORIGIN_TAGS
            ):
                dropped += 1
            else:
                kept.append(tag)
    return tuple(kept), dropped


def parse(headers: Mapping[str, Sequence[str]], now: float) -> CacheHeaders:
    """
    What an origin's answer says about caching it (docs/http-caching.md).

    @param headers: The answer's headers: lower-case names to their values
        as sent (several lines of one header are several items), decoded as
        Latin-1.
    @param now: The time of receipt (Unix seconds), used when C{Date} is
        absent or invalid.
    """
    surrogate = _directives(headers.get("surrogate-control", ()))
    control = _directives(headers.get("cache-control", ()))
    fresh = _fresh(headers, surrogate, control, now)
    swr = _stale("stale-while-revalidate", surrogate, control)
    sie = _stale("stale-if-error", surrogate, control)
    tags, dropped = _tags(headers.get("surrogate-key", ()))
    return CacheHeaders(
        fresh=None if fresh is None else fresh.seconds,
        fresh_from="" if fresh is None else fresh.text,
        stale_while_revalidate=None if swr is None else swr.seconds,
        stale_if_error=None if sie is None else sie.seconds,
        no_store=_no_store(surrogate, control),
        etag=_etag(headers),
        last_modified=_last_modified(headers, now),
        tags=tags,
        tags_dropped=dropped,
        stale_while_revalidate_from="" if swr is None else swr.text,
        stale_if_error_from="" if sie is None else sie.text,
    )


def _seconds(value: float) -> str:
    """C{value} seconds for a person, to the millisecond: C{"60s"}, C{"1.5s"}."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _bounded(
    given: float | None, given_from: str, default: float, cap: float, key: str
) -> tuple[float, str]:
    """C{given} (else C{default}) at most C{cap}, and why, for an operator."""
    value, why = (default, "the job (no header)") if given is None else (given, given_from)
    if value > cap:
        value, why = cap, f"{why}, capped by {key} ({_seconds(cap)})"
    return float(value), why


def lifetimes(
    headers: CacheHeaders, *, fresh: float, max_fresh: float, stale: float, stale_if_error: float
) -> Lifetimes:
    """
    The entry's windows (L{refresherd.entry.Lifetimes}, re-exported here),
    each with a line saying where it came from: C{fresh} is the origin's (if
    it said) else the job's C{fresh}, never above C{max_fresh}; C{stale} is
    the origin's C{stale-while-revalidate} if given, else the job's C{stale},
    never above the job's C{stale}; C{stale_if_error} likewise with the job's
    C{stale_if_error}.  The job's values (never negative: the configuration
    refuses that) are defaults and caps.
    """
    fresh_s, fresh_why = _bounded(headers.fresh, headers.fresh_from, fresh, max_fresh, "max_fresh")
    stale_s, stale_why = _bounded(
        headers.stale_while_revalidate, headers.stale_while_revalidate_from, stale, stale, "stale"
    )
    error_s, error_why = _bounded(
        headers.stale_if_error,
        headers.stale_if_error_from,
        stale_if_error,
        stale_if_error,
        "stale_if_error",
    )
    return Lifetimes(
        fresh=fresh_s,
        stale=stale_s,
        stale_if_error=error_s,
        why={"fresh": fresh_why, "stale": stale_why, "stale_if_error": error_why},
    )
