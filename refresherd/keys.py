"""
The store key scheme of SPEC section 8, in one place.

    {namespace}:{job}:v{version}:{args}

C{args} is C{name=value} pairs sorted by name and joined by C{&}; each value is
percent-encoded (its UTF-8 bytes, everything outside C{A-Z a-z 0-9 - . _ ~} as
C{%XX} in uppercase hex).  When the whole key would exceed 200 bytes, C{args}
becomes C{#} and the lowercase hex SHA-256 of that C{args} string.  Keys are
therefore memcached-safe and any program can compute them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import quote

MAX_KEY_BYTES = 200


def encode_value(value: str) -> str:
    """
    Percent-encode one argument value: every byte of its UTF-8 encoding outside
    the RFC 3986 unreserved set is written C{%XX}.
    """
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
