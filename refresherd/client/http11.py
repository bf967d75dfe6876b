"""
HTTP/1.1 for L{refresherd.client.AsyncHTTPTransport} on asyncio streams: the
bytes of a request's head (L{request_head}) and an answer read from a stream
(L{read_answer}): its status line, its headers, and its body by
C{Content-Length}, chunks, or up to the end of the connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

import attrs

MAX_HEAD = 65536
"""The longest head of an answer read: longer is a bad answer."""
MAX_CHUNK_LINE = 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


class BadAnswer(Exception):
    """The bytes read are not an HTTP/1.1 answer."""


@attrs.frozen
class Answer:
    """
    An answer read: C{status}, C{reason}, C{headers} (names in lower case,
    repeated ones joined by C{", "}), C{body}, and whether the connection may
    carry another request (C{keep}).
    """

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    keep: bool


def request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """The head of a request, with C{Content-Length} when it has a body or is not a GET."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body is not None or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Caseless(dict[str, str]):
    """Headers by lower-case name, read by a name of any case."""

    def get(self, name: str, default: None = None, /) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


def parse_head(head: bytes) -> tuple[str, int, str, Caseless]:
    """The version, status, reason and headers of an answer's head (without its blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise BadAnswer("an undecodable head") from None
    status_line, *lines = text.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadAnswer(f"not a status line: {status_line[:80]!r}")
    version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) == 3 else ""
    headers = Caseless()
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadAnswer(f"not a header line: {line[:80]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return version, status, reason, headers


async def read_answer(reader: asyncio.StreamReader, method: str) -> Answer:
    """
    One answer read from C{reader}; L{BadAnswer} if it is not HTTP/1.1,
    C{asyncio.IncompleteReadError} if the connection ends before it does.
    """
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BadAnswer("a head longer than the limit") from None
        version, status, reason, headers = parse_head(head[:-4])
        if status >= 200 or status == 101:
            break  # an informational answer (100 Continue) precedes the real one
    keep = version == "HTTP/1.1" and "close" not in (headers.get("connection") or "").lower()
    if method == "HEAD" or status in (204, 304) or status < 200:
        return Answer(status, reason, headers, b"", keep)
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        return Answer(status, reason, headers, await _chunks(reader), keep)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadAnswer(f"a bad Content-Length: {length[:40]!r}")
        return Answer(status, reason, headers, await reader.readexactly(int(length)), keep)
    return Answer(status, reason, headers, await reader.read(), False)


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        if len(line) > MAX_CHUNK_LINE:
            raise BadAnswer("a chunk size line longer than the limit")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise BadAnswer(f"a bad chunk size: {size_text[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers, ignored
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise BadAnswer("a chunk not followed by CRLF")
