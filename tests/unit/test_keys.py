"""
The store key scheme (docs/store-format.md, "Keys"), checked against values computed here
by hand (and by an independent reimplementation for the properties).
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refresherd.keys import check_entry_key, entry_key, generation_key

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def reference_key(namespace: str, job: str, version: int, args: dict[str, str]) -> str:
    """The key of docs/store-format.md, "Keys", written out again byte by byte."""
    pairs = []
    for name in sorted(args):
        value = "".join(
            chr(byte) if byte in UNRESERVED else f"%{byte:02X}"
            for byte in args[name].encode("utf-8")
        )
        pairs.append(f"{name}={value}")
    part = "&".join(pairs)
    key = f"{namespace}:{job}:v{version}:{part}"
    if len(key.encode("utf-8")) > 200:
        key = f"{namespace}:{job}:v{version}:#" + hashlib.sha256(part.encode()).hexdigest()
    return key


def test_no_args() -> None:
    assert entry_key("rfd", "job", 1, {}) == "rfd:job:v1:"


def test_version_is_in_the_key() -> None:
    assert entry_key("rfd", "job", 17, {"a": "1"}) == "rfd:job:v17:a=1"


def test_args_are_sorted_by_name() -> None:
    args = {"user": "bob", "b": "2", "a_1": "x", "A": "y", "a": "z"}
    assert entry_key("rfd", "tweets", 1, args) == "rfd:tweets:v1:A=y&a=z&a_1=x&b=2&user=bob"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("~-._", "~-._"),
        ("AZaz09", "AZaz09"),
        ("a/b", "a%2Fb"),
        ("a&b=c", "a%26b%3Dc"),
        ("%", "%25"),
        ("#:?", "%23%3A%3F"),
        ("\t\n\x00\x7f", "%09%0A%00%7F"),
        ("\u00e9", "%C3%A9"),
        ("\u00ff", "%C3%BF"),
        ("\U0001f40d", "%F0%9F%90%8D"),
        ("", ""),
    ],
)
def test_values_are_percent_encoded(value: str, encoded: str) -> None:
    assert entry_key("rfd", "job", 1, {"q": value}) == f"rfd:job:v1:q={encoded}"


def test_key_of_exactly_200_bytes_is_not_hashed() -> None:
    prefix = "rfd:job:v1:"
    args = {"q": "x" * (200 - len(prefix) - len("q="))}
    key = entry_key("rfd", "job", 1, args)
    assert len(key) == 200
    assert key == prefix + "q=" + args["q"]


def test_key_of_201_bytes_is_hashed() -> None:
    args = {"q": "x" * (201 - len("rfd:job:v1:q="))}
    digest = hashlib.sha256(("q=" + args["q"]).encode("ascii")).hexdigest()
    assert entry_key("rfd", "job", 1, args) == "rfd:job:v1:#" + digest


def test_length_is_counted_after_percent_encoding() -> None:
    # 63 spaces are 63 characters but 189 once encoded: 11 + 2 + 189 = 202 bytes.
    args = {"q": " " * 63}
    digest = hashlib.sha256(("q=" + "%20" * 63).encode("ascii")).hexdigest()
    assert entry_key("rfd", "job", 1, args) == "rfd:job:v1:#" + digest


def test_hash_is_of_the_sorted_encoded_args_string() -> None:
    args = {"z": "\u00e9" * 40, "a": "x y" * 20}
    part = "a=" + "x%20y" * 20 + "&z=" + "%C3%A9" * 40
    expected = "ns:j:v2:#" + hashlib.sha256(part.encode("ascii")).hexdigest()
    assert entry_key("ns", "j", 2, args) == expected


def test_hashed_key_of_longest_names_fits_memcached() -> None:
    key = entry_key("n" * 64, "j" * 64, 999_999, {"q": "x" * 500})
    assert len(key) <= 250
    assert key.rpartition(":")[2].startswith("#")


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
namespaces = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
arguments = st.dictionaries(names, st.text(max_size=120), max_size=6)
versions = st.integers(min_value=0, max_value=10**9)


@given(namespaces, namespaces, versions, arguments)
def test_key_matches_an_independent_implementation(
    namespace: str, job: str, version: int, args: dict[str, str]
) -> None:
    assert entry_key(namespace, job, version, args) == reference_key(namespace, job, version, args)


@given(namespaces, namespaces, versions, arguments)
def test_keys_are_memcached_safe(
    namespace: str, job: str, version: int, args: dict[str, str]
) -> None:
    key = entry_key(namespace, job, version, args)
    assert len(key.encode("utf-8")) <= 250
    assert all(0x21 <= ord(char) <= 0x7E for char in key), key


@given(namespaces, namespaces, versions, arguments)
def test_unhashed_keys_give_back_their_args(
    namespace: str, job: str, version: int, args: dict[str, str]
) -> None:
    key = entry_key(namespace, job, version, args)
    part = key[len(f"{namespace}:{job}:v{version}:") :]
    assume(not part.startswith("#"))
    assert len(key) <= 200
    pairs = [pair.split("=") for pair in part.split("&")] if part else []
    assert {name: unquote(value, errors="strict") for name, value in pairs} == args


@given(arguments, arguments)
def test_different_args_give_different_keys(one: dict[str, str], two: dict[str, str]) -> None:
    assume(one != two)
    assert entry_key("rfd", "job", 1, one) != entry_key("rfd", "job", 1, two)


@given(arguments)
def test_one_changed_value_gives_a_different_key(args: dict[str, str]) -> None:
    changed = {**args, "q": args.get("q", "") + "x"}
    assert entry_key("rfd", "job", 1, args) != entry_key("rfd", "job", 1, changed)


def test_generation_keys_name_their_kind_and_strength() -> None:
    assert generation_key("rfd", "tag", "user:bob", hard=True) == "rfd:gen:hard:tag:user:bob"
    assert generation_key("rfd", "job", "tweets", hard=False) == "rfd:gen:soft:job:tweets"


@pytest.mark.parametrize("tag", ["caf\u00e9", "a b", "#x", "", "x\r\nflush_all", "t" * 190])
def test_generation_keys_hash_tags_that_are_not_safe_key_parts(tag: str) -> None:
    digest = hashlib.sha256(tag.encode("utf-8")).hexdigest()
    assert generation_key("rfd", "tag", tag, hard=True) == f"rfd:gen:hard:tag:#{digest}"


@pytest.mark.parametrize(
    "key", ["rfd:tweets:v1:username=bob", "rfd:report:v1:", "rfd:a-b_c:v12:#" + "0" * 64]
)
def test_check_entry_key_takes_entry_keys_of_the_namespace(key: str) -> None:
    assert check_entry_key(key, "rfd") == key


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("rfd:lease:tweets:v1:username=bob", "not an entry key"),
        ("rfd:gen:hard:tag:user:bob", "not an entry key"),
        ("other:tweets:v1:username=bob", "not in the namespace 'rfd'"),
        ("rfd:tweets:v1:user name=bob", "not a key"),
        ("rfd:tweets:v1:x\r\nflush_all", "not a key"),
        ("rfd:tweets:v1:" + "x" * 240, "not a key"),
        ("", "not a key"),
    ],
)
def test_check_entry_key_refuses_anything_else(key: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_entry_key(key, "rfd")
