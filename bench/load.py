"""
A light load generator for bursts: N requests at once, each on its own
connection, over asyncio streams with a minimal HTTP/1.1 client.  Python
HTTP client libraries spend more time per request than the server under
test does, which would measure the client instead of refresherd.

The collector of the load generator's own process is off while it measures
(L{measuring}): a full collection of a heap that holds a long benchmark's
results pauses every request in flight (55 ms for the results of a full
C{bench.peers} run on this machine) and was the largest noise of its p99s.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


def measuring(main: Coroutine[Any, Any, T]) -> T:
    """C{asyncio.run(main)} with this process's garbage collector off meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return asyncio.run(main)
    finally:
        if enabled:
            gc.enable()


async def _one(host: str, port: int, target: str, timeout: float) -> tuple[float, int]:
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return time.perf_counter() - start, status


async def _burst(urls: list[str], timeout: float) -> list[tuple[float, int]]:
    calls = []
    for url in urls:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        calls.append(_one(parts.hostname or "127.0.0.1", parts.port or 80, target, timeout))
    return list(await asyncio.gather(*calls))


def burst(urls: list[str], timeout: float = 60.0) -> list[tuple[float, int]]:
    """Send one GET to each URL, all at once; (latency in seconds, status) of each."""
    return measuring(_burst(urls, timeout))
