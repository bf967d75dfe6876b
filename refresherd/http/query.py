"""
A query string's arguments, decoded as HTML forms decode them (C{+} is a
space): a repeated argument or bytes that are not UTF-8 are C{bad_args}.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from refresherd.errors import BadArgs


def _form_decode(part: bytes) -> str:
    return unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")


def parse_query(query: bytes) -> dict[str, str]:
    """The arguments of a query string, each given once."""
    args: dict[str, str] = {}
    for pair in query.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        try:
            key, text = _form_decode(name), _form_decode(value)
        except UnicodeDecodeError:
            raise BadArgs("the query string is not UTF-8") from None
        if key in args:
            raise BadArgs(f"argument {key!r} is given more than once")
        args[key] = text
    return args
