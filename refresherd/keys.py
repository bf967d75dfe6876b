"""
The store key scheme (docs/store-format.md, "Keys"), in one place.

    {namespace}:{job}:v{version}:{args}

C{args} is C{name=value} pairs sorted by name and joined by C{&}; each value is
percent-encoded (its UTF-8 bytes, everything outside C{A-Z a-z 0-9 - . _ ~} as
C{%XX} in uppercase hex).  When the whole key would exceed 200 bytes, C{args}
becomes C{#} and the lowercase hex SHA-256 of that C{args} string.  Keys are
therefore memcached-safe and any program can compute them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from urllib.parse import quote

MAX_KEY_BYTES = 200
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


def encode_value(value: str) -> str:
    """
    Percent-encode one argument value: every byte of its UTF-8 encoding outside
    the RFC 3986 unreserved set is written C{%XX}.
    """
    if _UNRESERVED.fullmatch(value):
        return value  # most values, and urllib's quote costs more than a lookup
    return quote(value.encode("utf-8"), safe="")


def args_string(args: Mapping[str, str]) -> str:
    """
    The C{{args}} part of a key, before any hashing.
    """
    return "&".join(f"{name}={encode_value(args[name])}" for name in sorted(args))


def hashed_args(args_part: str) -> str:
    return "#" + hashlib.sha256(args_part.encode("ascii")).hexdigest()


def entry_key(namespace: str, job: str, version: int, args: Mapping[str, str]) -> str:
    """
    The key of the entry for C{job} at C{version} with C{args}.
    """
    prefix = f"{namespace}:{job}:v{version}:"
    part = args_string(args)
    if len(prefix) + len(part) > MAX_KEY_BYTES:
        part = hashed_args(part)
    return prefix + part


_SAFE_PART = re.compile(r"[\x21-\x7e]+")


def generation_key(namespace: str, kind: str, name: str, hard: bool) -> str:
    """
    The key holding the current purge generation of a job or a tag:
    C{{namespace}:gen:{hard|soft}:{job|tag}:{name}}.  A name that is not
    printable ASCII without white space, that starts with C{#}, or that would
    make the key longer than 200 bytes is written C{#} and the lowercase hex
    SHA-256 of its UTF-8 bytes.
    """
    prefix = f"{namespace}:gen:{'hard' if hard else 'soft'}:{kind}:"
    if (
        not _SAFE_PART.fullmatch(name)
        or name.startswith("#")
        or len(prefix) + len(name) > MAX_KEY_BYTES
    ):
        name = "#" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return prefix + name


ENTRY_KEY = re.compile(r"(?P<namespace>[A-Za-z0-9_-]{1,64}):(?P<job>[A-Za-z0-9_-]{1,64}):v[0-9]+:")


def check_entry_key(key: str, namespace: str) -> str:
    """
    C{key} if it is the key of an entry of C{namespace}, as L{entry_key} makes
    them (printable ASCII, no white space, at most 250 bytes); else
    L{ValueError} saying why.  Other keys of the store (leases, chunks,
    generations) and keys of other namespaces are refused.
    """
    if not _SAFE_PART.fullmatch(key) or len(key) > 250:
        raise ValueError(f"not a key: {key[:80]!r} (printable ASCII, no white space, 250 bytes)")
    match = ENTRY_KEY.match(key)
    if match is None:
        raise ValueError(f"not an entry key: {key[:80]!r} ({{namespace}}:{{job}}:v{{version}}:...)")
    if match["namespace"] != namespace:
        raise ValueError(f"key {key[:80]!r} is not in the namespace {namespace!r}")
    return key
