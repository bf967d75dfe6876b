"""
Templates (refresherd.core.templates): argument values fill placeholders of job
URLs, JSON bodies and tags, and never change their structure.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refresherd.core.templates import (
    check_url_template,
    json_placeholders,
    placeholders,
    render_json,
    render_tags,
    render_url,
)
from refresherd.errors import BadArgs

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def reference_encode(value: str) -> str:
    """Percent-encode every UTF-8 byte outside RFC 3986's unreserved set."""
    return "".join(
        chr(byte) if byte in UNRESERVED else f"%{byte:02X}" for byte in value.encode("utf-8")
    )


# placeholders


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("", []),
        ("no placeholders", []),
        ("{a}", ["a"]),
        ("{a}/{b_1}/{_c}/{a}", ["a", "b_1", "_c", "a"]),
        ("{1a}{a-b}{ a}{}", []),
        ("{{a}}", ["a"]),
        ("x{A}y", ["A"]),
    ],
)
def test_placeholders_are_listed_in_order(template: str, names: list[str]) -> None:
    assert placeholders(template) == names


def test_json_placeholders_looks_in_keys_values_and_nested_strings() -> None:
    template = {"{k}": ["{a}", {"n": "{b}"}, 1, None, True], "plain": "{c}"}
    assert sorted(json_placeholders(template)) == ["a", "b", "c", "k"]


# check_url_template


@pytest.mark.parametrize(
    "url",
    [
        "http://origin.test/",
        "https://origin.test",
        "http://origin.test/{a}",
        "https://origin.test:8443/users/{user}/posts/{post}",
        "http://origin.test/x?q={q}",
        "http://origin.test/x?q={q}&page={page}",
        "http://origin.test?q={q}",
        "http://user:pw@origin.test/{a}",
        "http://origin.test/{a}#top",
        "http://[::1]:8080/{a}",
        "http://origin.test/{a}{b}",
    ],
)
def test_url_template_with_placeholders_in_path_and_query_is_accepted(url: str) -> None:
    check_url_template(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://{host}/",
        "http://{host}.example.com/x",
        "http://origin.test:{port}/",
        "http://{user}@origin.test/",
        "http://user:{password}@origin.test/",
        "http://origin.test{suffix}/",
        "http://origin.test/x#{fragment}",
        "http://origin.test/x?q=1#a{fragment}",
        "{scheme}://origin.test/",
        "http{s}://origin.test/",
    ],
)
def test_url_template_with_placeholders_outside_path_and_query_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_url_template(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://origin.test/{a}",
        "file:///etc/{a}",
        "gopher://origin.test/",
        "javascript:alert(1)",
        "/relative/{a}",
        "relative/{a}",
        "//origin.test/{a}",
        "origin.test/{a}",
        "http:/origin.test/{a}",
        "http:///{a}",
        "",
    ],
)
def test_url_template_that_is_not_an_absolute_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_url_template(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://origin.test/{",
        "http://origin.test/}",
        "http://origin.test/{a",
        "http://origin.test/a}",
        "http://origin.test/{}",
        "http://origin.test/{1a}",
        "http://origin.test/{a-b}",
        "http://origin.test/{{a}}",
        "http://origin.test/{ a }",
        "http://origin.test/x?q={a}}",
    ],
)
def test_url_template_with_stray_braces_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_url_template(url)


# render_url


def test_render_url_fills_path_and_query() -> None:
    url = render_url("http://origin.test/users/{user}?page={page}", {"user": "bob", "page": "2"})
    assert url == "http://origin.test/users/bob?page=2"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a/b", "a%2Fb"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("a&b=c", "a%26b%3Dc"),
        ("100%", "100%25"),
        ("%2F", "%252F"),
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("\u00e9", "%C3%A9"),
        ("\U0001f600", "%F0%9F%98%80"),
        ("@:;,!$'()*[]", "%40%3A%3B%2C%21%24%27%28%29%2A%5B%5D"),
        ("\\", "%5C"),
        ("\r\n\x00", "%0D%0A%00"),
        ("AZaz09-._~", "AZaz09-._~"),
        ("...", "..."),
        ("", ""),
    ],
)
def test_render_url_percent_encodes_every_byte_outside_unreserved(value: str, encoded: str) -> None:
    assert reference_encode(value) == encoded
    assert render_url("http://origin.test/x/{v}", {"v": value}) == "http://origin.test/x/" + encoded


@pytest.mark.parametrize("value", [".", ".."])
def test_render_url_refuses_dot_segments(value: str) -> None:
    with pytest.raises(BadArgs):
        render_url("http://origin.test/a/{v}/b", {"v": value})
    with pytest.raises(BadArgs):
        render_url("http://origin.test/a?q={v}", {"v": value})


def test_render_url_leaves_the_template_text_alone() -> None:
    url = "https://user:pw@origin.test:8443/a%20b/{v}?x=1&y={v}#frag"
    assert render_url(url, {"v": "1/2"}) == (
        "https://user:pw@origin.test:8443/a%20b/1%2F2?x=1&y=1%2F2#frag"
    )


URL_TEMPLATE = "https://origin.test:8443/api/{a}/items/{b}?q={a}&page={b}"


@given(st.text(), st.text())
def test_no_value_changes_the_structure_of_the_url(a: str, b: str) -> None:
    assume(a not in (".", "..") and b not in (".", ".."))
    template = urlsplit(URL_TEMPLATE)
    rendered = render_url(URL_TEMPLATE, {"a": a, "b": b})
    parsed = urlsplit(rendered)
    assert (parsed.scheme, parsed.netloc) == (template.scheme, template.netloc)
    assert parsed.hostname == "origin.test" and parsed.port == 8443
    assert parsed.path.count("/") == template.path.count("/")
    assert parsed.path.split("/")[:3] == ["", "api", reference_encode(a)]
    assert parsed.query.split("&") == [f"q={reference_encode(a)}", f"page={reference_encode(b)}"]
    assert parsed.fragment == ""
    assert unquote(parsed.path.split("/")[2], errors="strict") == a
    assert set(rendered) <= set(map(chr, UNRESERVED)) | set(":/?&=%")


# render_json


def test_render_json_fills_keys_and_values_at_any_depth() -> None:
    template = {
        "user": "{user}",
        "{field}": "x-{user}-y",
        "list": ["{user}", {"deep": ["{field}"]}],
        "n": 1,
        "f": 1.5,
        "b": False,
        "none": None,
    }
    assert render_json(template, {"user": "bob", "field": "name"}) == {
        "user": "bob",
        "name": "x-bob-y",
        "list": ["bob", {"deep": ["name"]}],
        "n": 1,
        "f": 1.5,
        "b": False,
        "none": None,
    }


@pytest.mark.parametrize(
    "value",
    ['"', '", "admin": true, "x": "', "}", "{", "{user}", "]}", "\\", "\\u0000", "\n", "{{}}"],
)
def test_render_json_values_with_quotes_or_braces_stay_inside_their_string(value: str) -> None:
    template = {"q": "{v}", "{v}": ["{v}"], "fixed": {"k": 1}}
    rendered = render_json(template, {"v": value, "user": "never"})
    assert rendered == {"q": value, value: [value], "fixed": {"k": 1}}
    assert json.loads(json.dumps(rendered)) == rendered


def test_render_json_does_not_expand_placeholders_inside_values() -> None:
    assert render_json(["{a}", "{b}"], {"a": "{b}", "b": "B"}) == ["{b}", "B"]


def test_render_json_leaves_the_template_unchanged() -> None:
    template: dict[str, Any] = {"a": ["{x}"], "{x}": {"y": "{x}"}}
    snapshot = json.loads(json.dumps(template))
    render_json(template, {"x": "1"})
    assert template == snapshot


def json_shape(document: Any) -> Any:
    """The document with every string replaced by one marker: its structure."""
    if isinstance(document, str):
        return "s"
    if isinstance(document, dict):
        return sorted((json_shape(v) for v in document.values()), key=repr)
    if isinstance(document, list):
        return [json_shape(item) for item in document]
    return document


@given(st.text())
def test_no_value_changes_the_structure_of_a_json_body(value: str) -> None:
    template = {"q": "{v}", "nested": [{"a": "pre {v} post"}, 3, None], "list": ["{v}", "{v}"]}
    rendered = render_json(template, {"v": value})
    assert json_shape(rendered) == json_shape(template)
    assert rendered["nested"][0]["a"] == f"pre {value} post"
    assert rendered["list"] == [value, value]


# render_tags


def test_render_tags_fills_each_tag_as_is() -> None:
    tags = ("user:{user}", "static", "{user}/{page}", "")
    assert render_tags(tags, {"user": "a b/c", "page": "%2"}) == (
        "user:a b/c",
        "static",
        "a b/c/%2",
        "",
    )


def test_render_tags_of_no_tags_is_empty() -> None:
    assert render_tags((), {"a": "x"}) == ()


def test_render_tags_allows_dot_values() -> None:
    assert render_tags(["t:{a}"], {"a": ".."}) == ("t:..",)
