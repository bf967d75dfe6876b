"""
Request arguments (docs/README.md, "Answers"; docs/configuration.md,
"`arg_patterns`"): query strings decoded as HTML forms decode them, then
checked against the job that takes them.
"""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refresherd.config import JobConfig
from refresherd.core.args import check_args
from refresherd.core.patterns import compile_pattern
from refresherd.errors import BadArgs
from refresherd.http.query import parse_query

# parse_query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {}),
        (b"a=1", {"a": "1"}),
        (b"a=1&b=2", {"a": "1", "b": "2"}),
        (b"q=hello+world", {"q": "hello world"}),
        (b"q=a%2Bb", {"q": "a+b"}),
        (b"q=a%20b", {"q": "a b"}),
        (b"q=%26%3D%23%3F%2F", {"q": "&=#?/"}),
        (b"q=%25", {"q": "%"}),
        (b"q=%2525", {"q": "%25"}),
        (b"q=caf%C3%A9", {"q": "caf\u00e9"}),
        (b"q=%E2%82%AC+%F0%9F%98%80", {"q": "\u20ac \U0001f600"}),
        (b"q=%c3%a9", {"q": "\u00e9"}),
        (b"my+name=v", {"my name": "v"}),
        (b"n%61me=v", {"name": "v"}),
        (b"q=a=b", {"q": "a=b"}),
        (b"q=", {"q": ""}),
        (b"q", {"q": ""}),
        (b"a&b=2", {"a": "", "b": "2"}),
        (b"a=1&&b=2", {"a": "1", "b": "2"}),
        (b"&a=1&", {"a": "1"}),
        (b"&&&", {}),
        (b"q=100%", {"q": "100%"}),
    ],
)
def test_parse_query_decodes_as_html_forms_do(query: bytes, expected: dict[str, str]) -> None:
    assert parse_query(query) == expected


def test_parse_query_takes_raw_utf8_bytes() -> None:
    assert parse_query("q=\u00e9".encode()) == {"q": "\u00e9"}


@pytest.mark.parametrize(
    "query",
    [b"a=1&a=2", b"a=1&a=1", b"a&a", b"a=1&b=2&a=3", b"a=1&%61=2", b"a+b=1&a%20b=2"],
)
def test_a_repeated_argument_is_bad_args(query: bytes) -> None:
    with pytest.raises(BadArgs):
        parse_query(query)


@pytest.mark.parametrize(
    "query",
    [b"q=%FF", b"q=%C3", b"q=%C3%28", b"q=\xff", b"%FF=1", b"q=%ED%A0%80", b"q=%C0%AF"],
)
def test_a_query_that_is_not_utf8_is_bad_args(query: bytes) -> None:
    with pytest.raises(BadArgs):
        parse_query(query)


# check_args


URL_JOB = JobConfig(
    name="j",
    fresh=60.0,
    fetch="http",
    url="http://origin.test/users/{user}?page={page}",
    args=("user", "page", "tag"),
)

PY_JOB = JobConfig(
    name="p", fresh=60.0, fetch="python", callable="mod:fn", args=("a", "b"), tags=("t:{a}",)
)


def test_valid_args_are_returned_as_strings() -> None:
    args = {"user": "bob", "page": "2", "tag": "x"}
    assert check_args(URL_JOB, args) == args


def test_a_job_without_arguments_takes_an_empty_mapping() -> None:
    job = JobConfig(name="n", fresh=1.0, fetch="python", callable="m:f")
    assert check_args(job, {}) == {}
    with pytest.raises(BadArgs):
        check_args(job, {"x": "1"})


@pytest.mark.parametrize(
    "args",
    [{}, {"user": "bob"}, {"user": "bob", "page": "1"}, {"page": "1", "tag": "t"}],
)
def test_a_missing_argument_is_bad_args(args: dict[str, str]) -> None:
    with pytest.raises(BadArgs):
        check_args(URL_JOB, args)


@pytest.mark.parametrize("extra", ["other", "User", "", "user "])
def test_an_unknown_argument_is_bad_args(extra: str) -> None:
    args = {"user": "bob", "page": "1", "tag": "t", extra: "v"}
    with pytest.raises(BadArgs):
        check_args(URL_JOB, args)


@pytest.mark.parametrize("value", [1, 0, 1.5, None, True, ["bob"], {"v": "bob"}, b"bob"])
def test_a_value_that_is_not_a_string_is_bad_args(value: object) -> None:
    with pytest.raises(BadArgs):
        check_args(PY_JOB, {"a": value, "b": "ok"})


def test_non_string_values_from_a_json_batch_are_bad_args() -> None:
    for text in ['{"a": 7, "b": "x"}', '{"a": null, "b": "x"}', '{"a": ["x"], "b": "x"}']:
        with pytest.raises(BadArgs):
            check_args(PY_JOB, json.loads(text))


def test_a_lone_surrogate_from_json_is_bad_args() -> None:
    args = json.loads('{"a": "\\ud800", "b": "x"}')
    with pytest.raises(BadArgs):
        check_args(PY_JOB, args)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("x" * 1024, True),
        ("x" * 1025, False),
        ("\u00e9" * 512, True),
        ("\u00e9" * 513, False),
        ("\u20ac" * 341 + "x", True),
        ("\u20ac" * 342, False),
        ("\U0001f600" * 256, True),
        ("\U0001f600" * 256 + "x", False),
        ("", True),
    ],
)
def test_values_are_limited_to_1024_utf8_bytes(value: str, ok: bool) -> None:
    assert (len(value.encode("utf-8")) <= 1024) is ok
    if ok:
        assert check_args(PY_JOB, {"a": value, "b": "x"})["a"] == value
    else:
        with pytest.raises(BadArgs):
            check_args(PY_JOB, {"a": value, "b": "x"})


PATTERN_JOB = JobConfig(
    name="pat",
    fresh=60.0,
    fetch="python",
    callable="m:f",
    args=("id", "free"),
    arg_patterns={"id": compile_pattern(r"[0-9]+")},
)


@pytest.mark.parametrize("value", ["0", "42", "1234567890"])
def test_a_value_fully_matching_its_pattern_passes(value: str) -> None:
    assert check_args(PATTERN_JOB, {"id": value, "free": "../x"}) == {"id": value, "free": "../x"}


@pytest.mark.parametrize(
    "value", ["", "42a", "a42", "4 2", "42\n", "\n42", "42/../x", "\uff14\uff12"]
)
def test_a_value_only_partly_matching_its_pattern_is_bad_args(value: str) -> None:
    with pytest.raises(BadArgs):
        check_args(PATTERN_JOB, {"id": value, "free": "x"})


def test_a_prefix_pattern_does_not_pass_a_longer_value() -> None:
    job = JobConfig(
        name="pre",
        fresh=1.0,
        fetch="python",
        callable="m:f",
        args=("slug",),
        arg_patterns={"slug": compile_pattern(r"[a-z]+|[a-z]+-[0-9]+")},
    )
    assert check_args(job, {"slug": "abc-12"}) == {"slug": "abc-12"}
    with pytest.raises(BadArgs):
        check_args(job, {"slug": "abc-12x"})


@pytest.mark.parametrize("name", ["user", "page"])
@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_are_refused_for_arguments_in_the_url(name: str, value: str) -> None:
    args = {"user": "bob", "page": "1", "tag": "t", name: value}
    with pytest.raises(BadArgs):
        check_args(URL_JOB, args)


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_are_allowed_for_arguments_not_in_the_url(value: str) -> None:
    args = {"user": "bob", "page": "1", "tag": value}
    assert check_args(URL_JOB, args) == args
    assert check_args(PY_JOB, {"a": value, "b": value}) == {"a": value, "b": value}


@pytest.mark.parametrize("value", ["...", ". ", "%2e%2e", "a.b"])
def test_values_that_merely_contain_dots_are_allowed_in_the_url(value: str) -> None:
    args = {"user": value, "page": value, "tag": "t"}
    assert check_args(URL_JOB, args) == args


@pytest.mark.parametrize("value", ["a/b", "/", "./", "/..", "a/../b", "..\\x", "\\", ""])
def test_a_path_argument_may_not_be_empty_or_hold_a_slash_or_backslash(value: str) -> None:
    args = {"user": value, "page": "1", "tag": "t"}
    with pytest.raises(BadArgs, match="'user' fills a URL path segment"):
        check_args(URL_JOB, args)


@pytest.mark.parametrize("value", ["a/b", "/..", "a/../b", "..\\x", ""])
def test_a_query_argument_may_hold_slashes_or_be_empty(value: str) -> None:
    args = {"user": "bob", "page": value, "tag": value}
    assert check_args(URL_JOB, args) == args


@pytest.mark.parametrize("value", ["a/b", "/..", "a/../b", "..\\x", ""])
def test_a_path_argument_may_hold_slashes_or_be_empty_with_path_slash(value: str) -> None:
    job = attrs.evolve(URL_JOB, path_slash=True)
    args = {"user": value, "page": "1", "tag": "t"}
    assert check_args(job, args) == args


@pytest.mark.parametrize("value", [".", ".."])
def test_path_slash_still_refuses_dot_segments(value: str) -> None:
    job = attrs.evolve(URL_JOB, path_slash=True)
    with pytest.raises(BadArgs, match="may not be"):
        check_args(job, {"user": value, "page": "1", "tag": "t"})


def test_an_argument_in_both_path_and_query_is_held_to_the_path_rules() -> None:
    job = JobConfig(
        name="both", fresh=1.0, fetch="http", url="http://o.test/{a}/x?again={a}", args=("a",)
    )
    with pytest.raises(BadArgs):
        check_args(job, {"a": "x/y"})


def test_a_catastrophic_pattern_decides_a_crafted_value_at_once() -> None:
    """
    C{(a+)+b} against a thousand C{a} and a C{c}: a backtracking engine tries
    every way to split the C{a}s (2**1000) before it says no; RE2 says no in
    one pass, so this test returns.
    """
    job = JobConfig(
        name="redos",
        fresh=1.0,
        fetch="python",
        callable="m:f",
        args=("v",),
        arg_patterns={"v": compile_pattern("(a+)+b")},
    )
    crafted = "a" * 1000 + "c"
    assert len(crafted.encode()) <= 1024  # under the size limit: the pattern decides
    with pytest.raises(BadArgs, match="does not match '\\(a\\+\\)\\+b'"):
        check_args(job, {"v": crafted})
    assert check_args(job, {"v": "a" * 1000 + "b"}) == {"v": "a" * 1000 + "b"}


values = st.text(max_size=300).filter(lambda v: len(v.encode("utf-8")) <= 1024)


@given(st.fixed_dictionaries({"a": values, "b": values}))
def test_any_string_values_under_the_limit_pass_unchanged(args: dict[str, str]) -> None:
    assert check_args(PY_JOB, args) == args


path_values = values.filter(lambda v: v not in (".", "..") and v and not set(v) & {"/", "\\"})


@given(
    st.fixed_dictionaries({"user": path_values, "page": values, "tag": values}).filter(
        lambda args: args["page"] not in (".", "..")
    )
)
def test_any_string_values_under_the_limit_pass_unchanged_into_a_url_job(
    args: dict[str, str],
) -> None:
    assert check_args(URL_JOB, args) == args
