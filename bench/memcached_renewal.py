"""
What a renewal costs on memcached: a value revalidated with its origin (a
C{304 Not Modified}) is written again with the same body and new times.  With
manifests of version 2 the store writes only the manifest and extends the
chunks' expiry (C{touch}); with version 1 (C{manifest_version=1}, what earlier
releases wrote) it writes every chunk again.  Both in one run, on one real
C{memcached} on loopback (the test suite's L{MemcachedServer}, with room for
the chunks that full rewrites leave behind).

For each size of C{--sizes} (MiB) and each way, the value is written once,
then renewed C{--renewals} times per round by fenced puts, as a refresh does
(the lease taken once per round; only the put is timed), in C{--rounds}
rounds that interleave the ways.  Per renewal: the median time of a put, and
what memcached counted (C{stats}): bytes it read (what the store sent),
storage commands (C{cmd_set}: C{set}, C{add}, C{cas}) and C{touch} commands.

Run from the repository root after C{bash .ci/run} (for the venv):

    .venv/bin/python -m bench.memcached_renewal [--rounds 5] [--renewals 20] [--sizes 1,16]

It writes its results into docs/benchmarks.md between its markers; with
C{--json}, it prints them as JSON instead (for tests: it runs the global
reactor, which cannot run twice in one process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import attrs

from bench.shared_stores import write_section
from bench.throughput import machine, versions
from refresherd.entry import Entry, Fetched, value_entry
from refresherd.stores.memcached.store import MemcachedStore
from tests.memcached_server import MemcachedServer

START, END = "<!-- bench:memcached_renewal:start -->", "<!-- bench:memcached_renewal:end -->"
NAMESPACE = "rfdbench"
MIB = 1024 * 1024
WAYS = {"full rewrite": 1, "manifest only": 2}
"""Each way and the manifest version its store writes."""
TTL = 3600.0
COUNTED = ("bytes_read", "cmd_set", "cmd_touch")


def entry_of(body: bytes, now: float) -> Entry:
    """A value fetched at C{now} (a renewal at C{now} has the same body and these times)."""
    return value_entry(
        Fetched(body, "application/octet-stream", validators=('"v1"', "")),
        job="item",
        args={"id": "1"},
        tags=("item:1",),
        now=now,
        duration=0.05,
        fresh=60.0,
        stale=600.0,
        stale_if_error=3600.0,
    )


@attrs.define
class Rows:
    """Per renewal, every round's: time (s) and what memcached counted."""

    seconds: list[float] = attrs.field(factory=list)
    counted: dict[str, list[float]] = attrs.field(factory=lambda: {n: [] for n in COUNTED})


Results = dict[int, dict[str, Rows]]


def counts(server: MemcachedServer) -> dict[str, int]:
    stats = server.stats()
    return {name: int(stats[name]) for name in COUNTED}


async def renew(
    store: MemcachedStore, server: MemcachedServer, key: str, body: bytes, times: int, rows: Rows
) -> None:
    """C{times} renewals of C{key}'s value under one lease, each put timed and counted."""
    token = await store.acquire_lease(key, TTL)
    assert token is not None
    for _ in range(times):
        entry = entry_of(body, time.time())
        before = counts(server)
        start = time.perf_counter()
        written = await store.put(key, entry, TTL, lease=token)
        rows.seconds.append(time.perf_counter() - start)
        after = counts(server)
        assert written, "a renewal did not land"
        for name in COUNTED:
            rows.counted[name].append(after[name] - before[name])
    await store.release_lease(key, token)


async def measure(
    reactor: Any, server: MemcachedServer, sizes: Sequence[int], renewals: int, rounds: int
) -> Results:
    stores = {
        way: MemcachedStore(
            reactor, ((server.host, server.port),), namespace=NAMESPACE, manifest_version=version
        )
        for way, version in WAYS.items()
    }
    for store in stores.values():
        store.startService()
    try:
        for store in stores.values():
            await store.ready()
        results: Results = {size: {way: Rows() for way in WAYS} for size in sizes}
        bodies = {size: os.urandom(size * MIB) for size in sizes}
        for way, store in stores.items():
            for size in sizes:
                key = f"{NAMESPACE}:item:v1:way={WAYS[way]}&size={size}"
                await store.put(key, entry_of(bodies[size], time.time()), TTL)
        for _ in range(rounds):
            for size in sizes:
                for way, store in stores.items():
                    key = f"{NAMESPACE}:item:v1:way={WAYS[way]}&size={size}"
                    rows = results[size][way]
                    await renew(store, server, key, bodies[size], renewals, rows)
        return results
    finally:
        for store in stores.values():
            await store.stopService()


def run(sizes: Sequence[int], renewals: int, rounds: int) -> Results:
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    results: Results = {}

    async def main(reactor: Any) -> None:
        results.update(await measure(reactor, server, sizes, renewals, rounds))

    # Room for every chunk that full rewrites leave until they expire or are evicted.
    with MemcachedServer(args=("-m", "1024")) as server:
        try:
            task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
        except SystemExit as e:
            if e.code:
                raise
    return results


def report(results: Results, args: argparse.Namespace) -> str:
    sizes = ",".join(str(size) for size in results)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {versions()}; "
        f"`python -m bench.memcached_renewal --rounds {args.rounds} "
        f"--renewals {args.renewals} --sizes {sizes}`.",
        "",
        f"Per renewal (a fenced put of the same body with new times), median of "
        f"{args.rounds * args.renewals} ({args.rounds} rounds of {args.renewals}); "
        "memcached's item limit is 1 MiB:",
        "",
        "| value | way | ms | bytes sent | storage commands | touch commands | time against full |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, by_way in results.items():
        full = statistics.median(by_way["full rewrite"].seconds)
        for way, rows in by_way.items():
            seconds = statistics.median(rows.seconds)
            sent, sets, touches = (statistics.median(rows.counted[name]) for name in COUNTED)
            lines.append(
                f"| {size} MiB | {way} | {1000 * seconds:.2f} | {sent:,.0f} | {sets:.0f} | "
                f"{touches:.0f} | {seconds / full:.3f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--renewals", type=int, default=20)
    parser.add_argument("--sizes", default="1,16")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = run(sizes, args.renewals, args.rounds)
    if args.json:
        print(
            json.dumps(
                {size: {w: attrs.asdict(r) for w, r in b.items()} for size, b in results.items()}
            )
        )
        return
    text = report(results, args)
    print(text)
    write_section(START, END, "Renewals on memcached", text)


if __name__ == "__main__":
    main()
