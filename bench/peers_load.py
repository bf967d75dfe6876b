"""
The load generator of L{bench.peers}: L{bench.load}'s design (asyncio streams,
a minimal HTTP/1.1 client, one connection per request, C{Connection: close})
with two times per request instead of one:

- C{answered}: until the whole response has arrived (by its C{Content-Length}
  or its last chunk), when a client reading the response has its answer;
- C{closed}: until the server closed the connection, which is later when a
  server keeps the connection of a request busy after answering it (nginx's
  C{proxy_cache_background_update} holds it until its background refresh ends).

A request that fails (refused, reset, timed out) counts with status 0.
The garbage collector is off while it measures, as in L{bench.load}.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import attrs

from bench.load import measuring

TIMEOUT = 60.0


@attrs.frozen
class Shot:
    """
    One request: when it began (Unix time), seconds until answered and until
    closed, and the status (0: failed).
    """

    began: float
    answered: float
    closed: float
    status: int


async def _body(reader: asyncio.StreamReader, head: bytes) -> None:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            await reader.readexactly(size + 2)
    else:
        await reader.read()


async def _one(url: str, timeout: float) -> Shot:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    began, start = time.time(), time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(head.split(b" ", 2)[1])
            await asyncio.wait_for(_body(reader, head), timeout)
            answered = time.perf_counter() - start
            await asyncio.wait_for(reader.read(), timeout)
            return Shot(began, answered, time.perf_counter() - start, status)
        finally:
            writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        elapsed = time.perf_counter() - start
        return Shot(began, elapsed, elapsed, 0)


async def _burst(urls: list[str], timeout: float) -> list[Shot]:
    return list(await asyncio.gather(*(_one(url, timeout) for url in urls)))


def burst(urls: list[str], timeout: float = TIMEOUT) -> list[Shot]:
    """One GET to each URL, all at once."""
    return measuring(_burst(urls, timeout))


async def _window(
    trigger: str | None, waves: list[list[str]], interval: float, lead: float, timeout: float
) -> tuple[Shot | None, list[Shot]]:
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(_one(trigger, timeout)) if trigger is not None else None
    await asyncio.sleep(lead)
    start = loop.time()
    tasks = []
    for number, wave in enumerate(waves):
        await asyncio.sleep(max(0.0, start + number * interval - loop.time()))
        tasks += [asyncio.create_task(_one(url, timeout)) for url in wave]
    shots = list(await asyncio.gather(*tasks))
    return (await first if first is not None else None), shots


def window(
    trigger: str | None,
    waves: list[list[str]],
    interval: float,
    lead: float = 0.05,
    timeout: float = TIMEOUT,
) -> tuple[Shot | None, list[Shot]]:
    """
    GET C{trigger} alone (if given), then after C{lead} seconds each wave of
    URLs at once, a wave every C{interval} seconds; the trigger's shot and the
    waves' shots.
    """
    return measuring(_window(trigger, waves, interval, lead, timeout))
