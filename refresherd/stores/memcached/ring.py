"""
Consistent hashing of keys onto memcached servers, ketama-style, so that
adding or removing one of C{n} servers moves only about C{1/n} of the keys.

Each server named C{host:port} has L{POINTS_PER_SERVER} points on a ring of
32-bit numbers: for C{i} from 0 to 39, the MD5 digest of C{"host:port-i"} gives
four points, its bytes 0-3, 4-7, 8-11 and 12-15 read as little-endian unsigned
integers.  A key's point is the first four bytes of the MD5 of the key, read
the same way; the key belongs to the server of the first point at or after it
(wrapping around), and the servers met further round the ring, in order, are
where it goes while that one is down.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

POINTS_PER_SERVER = 160


def _points(name: str) -> Iterator[int]:
    for i in range(POINTS_PER_SERVER // 4):
        digest = hashlib.md5(f"{name}-{i}".encode()).digest()
        for j in range(4):
            yield int.from_bytes(digest[4 * j : 4 * j + 4], "little")


def key_point(key: bytes) -> int:
    """Where C{key} falls on the ring."""
    return int.from_bytes(hashlib.md5(key).digest()[:4], "little")


class Ring(Generic[T]):
    """
    Servers on a ketama ring.  C{servers} pairs each server's name
    (C{host:port}) with whatever stands for it.
    """

    def __init__(self, servers: Sequence[tuple[str, T]]) -> None:
        if not servers:
            raise ValueError("a ring needs at least one server")
        ring = sorted(
            (point, name, index)
            for index, (name, _) in enumerate(servers)
            for point in _points(name)
        )
        self._points = [point for point, _, _ in ring]
        self._owners = [servers[index][1] for _, _, index in ring]
        self._count = len(servers)

    def walk(self, key: bytes) -> Iterator[T]:
        """Every server once, in the order C{key} tries them: its own first."""
        start = bisect.bisect_left(self._points, key_point(key))
        seen: list[T] = []
        total = len(self._owners)
        for step in range(total):
            owner = self._owners[(start + step) % total]
            if not any(owner is s for s in seen):
                seen.append(owner)
                yield owner
                if len(seen) == self._count:
                    return

    def server(self, key: bytes) -> T:
        """The server C{key} belongs to."""
        return next(self.walk(key))
