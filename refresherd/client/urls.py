"""The base URLs of refresherd's listeners: checked, and shown without credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def check_base_url(url: str) -> str:
    """
    C{url} without its trailing slashes if it is an C{http://} or C{https://}
    URL with a host and neither query nor fragment, else L{ValueError}.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # a bad port raises here
    except ValueError:
        raise ValueError(f"not a valid URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL with a host: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL has no query or fragment: {url!r}")
    return url.rstrip("/")


def display_url(url: str) -> str:
    """C{url} as it may be shown: without credentials."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
