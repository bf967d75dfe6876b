"""
What the memcached store writes, as pure functions: safe keys, the keys it
derives from an entry key (lease, chunks), expiry times, and the manifest of a
value split into chunks.  No I/O here; C{docs/memcached.md} is the contract.

The value under an entry key C{K} is either

    - the entry itself, C{encode(entry)} exactly as in C{docs/store-format.md}
      (its first byte is C{{}), when it fits in one item; or
    - a manifest of version 2, two lines

          manifest 2 {generation} {count} {length} {sha256}\\n
          {the entry's metadata line}\\n

      naming the chunks C{{ns}:chunk:{generation}:{i}:{rest of K}} for C{i} in
      C{0 .. count-1}, whose concatenation is C{length} bytes with that
      lowercase hex SHA-256: the entry's body.  The metadata line and the
      body are the entry's bytes.  A renewal (same body, new metadata) writes
      only a new manifest naming the same chunks.  Written when that item
      fits; else
    - a manifest of version 1, one line

          manifest 1 {generation} {count} {length} {sha256}\\n

      whose chunks hold the whole entry's bytes.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets

import attrs

from refresherd.entry import METADATA_MAX_BYTES

MAX_KEY_BYTES = 250
"""memcached's limit on a key."""

ITEM_HEADROOM = 1024
"""
Bytes of the item limit left for memcached's item header (about 60 bytes today),
beyond the key: an item of exactly the limit fails, and a failed C{set}
deletes the key's previous value.
"""

MIN_ITEM_LIMIT = 4096
"""The smallest item limit the store works with: a manifest and a chunk must fit."""

MAX_ITEM_LIMIT = 1024 * 1024 * 1024
"""memcached's own maximum of C{-I}."""

RELATIVE_EXPTIME_MAX = 2_592_000
"""memcached reads an expiry time above 30 days as an absolute Unix time."""

CHUNK_MARGIN = 5.0
"""Seconds chunks outlive their manifest, which is written after them."""

MANIFEST_HEADER_MAX = len("manifest 2 ") + 32 + 1 + 9 + 1 + 12 + 1 + 64 + 1
"""The longest first line of a manifest: its fixed fields, and the widest numbers it takes."""

_SAFE_KEY = re.compile(rb"[\x21-\x7e]{1,250}")


def check_key(key: str) -> bytes:
    """
    The bytes of C{key} if memcached can take it safely: 1 to 250 bytes of
    printable ASCII, no white space or control characters (no space, CR, LF,
    NUL, DEL).  Anything else is a L{ValueError}: such a key must never reach
    the wire, where it would inject commands or desynchronise the connection.
    """
    if not isinstance(key, str):
        raise ValueError(f"a memcached key must be a string, not {type(key).__name__}")
    try:
        data = key.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"refused memcached key {key[:60]!r}: not ASCII") from None
    if not _SAFE_KEY.fullmatch(data):
        why = (
            "empty"
            if not data
            else f"{len(data)} bytes, over {MAX_KEY_BYTES}"
            if len(data) > MAX_KEY_BYTES
            else "white space or a control character"
        )
        raise ValueError(f"refused memcached key {key[:60]!r}: {why}")
    return data


def derived_key(key: str, kind: str, middle: str = "") -> str:
    """
    The key of something that belongs to entry key C{key}: C{kind:} and
    C{middle} inserted after its namespace, as in C{{ns}:{kind}:{middle}{rest}}.
    When that is over 250 bytes, C{rest} becomes C{#} and its lowercase hex
    SHA-256, as L{refresherd.keys} hashes long arguments.
    """
    check_key(key)
    namespace, colon, rest = key.partition(":")
    prefix = f"{namespace}:{kind}:{middle}" if colon else f"{kind}:{middle}"
    if not colon:
        rest = key
    derived = prefix + rest
    if len(derived) > MAX_KEY_BYTES:
        derived = prefix + "#" + hashlib.sha256(rest.encode("ascii")).hexdigest()
    check_key(derived)
    return derived


def lease_key(key: str) -> str:
    """C{{ns}:lease:{rest}}, the key of C{key}'s lease (the Redis store's name)."""
    return derived_key(key, "lease")


def chunk_key(key: str, generation: str, index: int) -> str:
    """C{{ns}:chunk:{generation}:{index}:{rest}}, the key of one chunk of C{key}'s value."""
    return derived_key(key, "chunk", f"{generation}:{index}:")


def exptime(ttl: float, now: float) -> int:
    """
    The memcached expiry time of an item that must live at least C{ttl}
    seconds from C{now}: whole seconds rounded up, plus one, since memcached's
    clock ticks once a second and an item of C{n} seconds lives between
    C{n - 1} and C{n}.  Above 30 days memcached reads it as an absolute Unix
    time, so it is written as one.
    """
    seconds = math.ceil(ttl) + 1
    if seconds <= RELATIVE_EXPTIME_MAX:
        return seconds
    return math.ceil(now) + seconds


def fits(key: str, length: int, item_limit: int) -> bool:
    """Whether C{length} bytes go in one item under C{key}, with L{ITEM_HEADROOM} to spare."""
    return len(key) + length + ITEM_HEADROOM <= item_limit


def inline_fits(key: str, data: bytes, item_limit: int) -> bool:
    """Whether C{data} goes in one item under C{key}, with L{ITEM_HEADROOM} to spare."""
    return fits(key, len(data), item_limit)


def metadata_fits(key: str, metadata: bytes, item_limit: int) -> bool:
    """
    Whether a manifest of version 2 carrying the metadata line C{metadata}
    (its newline included) goes in one item under C{key}.
    """
    return fits(key, MANIFEST_HEADER_MAX + len(metadata), item_limit)


def chunk_size(item_limit: int) -> int:
    """The bytes of one chunk: room for the longest key and the item header."""
    return item_limit - MAX_KEY_BYTES - ITEM_HEADROOM


def most_chunks(length: int) -> int:
    """
    The most chunks a writer cuts C{length} bytes into: chunks of the
    smallest item limit (L{MIN_ITEM_LIMIT}), and one for an empty value.
    """
    return max(1, math.ceil(length / chunk_size(MIN_ITEM_LIMIT)))


_MANIFEST = re.compile(
    rb"manifest ([1-9][0-9]{0,8}) ([0-9a-f]{32}) ([1-9][0-9]{0,8}) ([0-9]{1,12}) ([0-9a-f]{64})\n"
)


@attrs.frozen
class Manifest:
    """
    What the entry key holds for a value in chunks: of version 2 when it
    carries the entry's C{metadata} line (the chunks are the body), of
    version 1 when C{metadata} is empty (the chunks are the whole entry).
    """

    generation: str
    count: int
    length: int
    sha256: str
    metadata: bytes = b""
    """Version 2: the entry's metadata line and its newline.  Version 1: empty."""

    @property
    def version(self) -> int:
        return 2 if self.metadata else 1

    def to_bytes(self) -> bytes:
        head = (
            f"manifest {self.version} {self.generation} {self.count} {self.length} {self.sha256}\n"
        )
        return head.encode("ascii") + self.metadata

    def chunk_keys(self, key: str) -> list[str]:
        return [chunk_key(key, self.generation, i) for i in range(self.count)]

    def join(self, chunks: list[bytes]) -> bytes:
        """
        The entry's bytes: the metadata line (version 2), then C{chunks} (all
        of them, in order); L{ValueError} if the chunks are not this
        manifest's.  Their length is checked before they are hashed or
        joined, so that chunks larger than claimed are never copied.
        """
        held = sum(len(chunk) for chunk in chunks)
        if held != self.length:
            raise ValueError(f"chunks hold {held} bytes, the manifest says {self.length}")
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise ValueError("chunks do not match the manifest's SHA-256")
        return b"".join([self.metadata, *chunks])

    def renewal(self, metadata: bytes, length: int, sha256: str) -> Manifest | None:
        """
        A manifest of the entry whose metadata line is C{metadata} and whose
        body has C{length} bytes of lowercase hex SHA-256 C{sha256}, naming
        this manifest's chunks; None unless this one is of version 2 and its
        chunks hold that very body.
        """
        if self.version != 2 or (self.length, self.sha256) != (length, sha256):
            return None
        return attrs.evolve(self, metadata=metadata)


def is_manifest(data: bytes) -> bool:
    return data.startswith(b"manifest ")


def parse_manifest(data: bytes, max_length: int) -> Manifest:
    """
    The manifest in C{data}; L{ValueError} if it is not one of version 1 or 2,
    or if what it claims is more than a writer makes: an entry over
    C{max_length} bytes (the largest entry the reader takes; for version 2,
    the metadata line and the body together), or more chunks than
    L{most_chunks} of its length.  So a manifest never makes a reader build,
    ask for or join more than its configured limits allow.  The metadata line
    of version 2 is checked here only for its shape (one line); the entry it
    makes with the chunks is checked as every entry is.
    """
    end = data.find(b"\n") + 1
    match = _MANIFEST.fullmatch(data[:end]) if end else None
    if match is None:
        raise ValueError("malformed manifest")
    version, metadata = int(match[1]), data[end:]
    if version not in (1, 2):
        raise ValueError(f"unknown manifest version {version}")
    if version == 1 and metadata:
        raise ValueError("malformed manifest: version 1 is one line")
    if version == 2 and (
        not metadata.startswith(b"{") or metadata.find(b"\n") != len(metadata) - 1
    ):
        raise ValueError("malformed manifest: version 2 ends with one metadata line")
    if len(metadata) > METADATA_MAX_BYTES + 1:
        raise ValueError(f"the manifest's metadata line is over {METADATA_MAX_BYTES} bytes")
    count, length = int(match[3]), int(match[4])
    if length + len(metadata) > max_length:
        raise ValueError(
            f"the manifest claims {length + len(metadata)} bytes, "
            f"over the largest entry ({max_length})"
        )
    if count > most_chunks(length):
        raise ValueError(
            f"the manifest claims {count} chunks for {length} bytes, "
            f"over the {most_chunks(length)} a writer makes"
        )
    return Manifest(match[2].decode("ascii"), count, length, match[5].decode("ascii"), metadata)


def split(
    data: bytes, item_limit: int, metadata: bytes = b"", sha256: str | None = None
) -> tuple[Manifest, list[bytes]]:
    """
    C{data} cut into chunks for C{item_limit}, under a new generation, and
    their manifest: of version 2 carrying C{metadata} (C{data} is then the
    body), or of version 1 (C{data} is the whole entry).  C{sha256}, when
    given, is C{data}'s (computed once by a caller that needed it already).
    """
    size = chunk_size(item_limit)
    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    digest = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
    manifest = Manifest(secrets.token_hex(16), len(chunks), len(data), digest, metadata)
    return manifest, chunks
