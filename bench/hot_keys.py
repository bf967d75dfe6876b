"""
The cost of C{HotKeysRegistry.observe}, the call a lookup makes on every
request: nanoseconds per call on a Zipf stream (exponent 1.1) over 10,000
keys, K = 100, a thousand requests a second of fake time; the median of
rounds, each timing batches of calls.

    .venv/bin/python -m bench.hot_keys [--rounds 5] [--requests 200000]

With C{--ranking}, how well a sketch of K keys ranks the N = 100 hottest keys
of C{bench.keep_hot}'s load (Zipf, exponent 1, over 10,000 keys, 300
requests a second): once a second after 40 s, how many of the 100 hottest
are not among the 200 the sketch ranks first (those refresh-ahead may keep),
for K = 2N, 5N and 10N.

It prints; it writes no file of the repository.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from refresherd.core.hotkeys import HotKeysRegistry

BATCH = 1000
"""Calls timed together: one call is shorter than the clock's resolution is worth."""


def zipf_keys(keys: int, count: int, seed: int = 1, s: float = 1.1) -> list[str]:
    """C{count} keys of C{keys}, the one of rank r drawn in proportion to 1 / r^s."""
    weights = [1 / rank**s for rank in range(1, keys + 1)]
    names = [f"rfd:user:v1:id={i}" for i in range(keys)]
    return random.Random(seed).choices(names, weights, k=count)


def measure(requests: int, keys: int = 10_000, capacity: int = 100) -> list[float]:
    """Nanoseconds per observe, one number per batch of L{BATCH} calls."""
    stream = zipf_keys(keys, requests)
    args = {key: {"id": key.rpartition("=")[2]} for key in set(stream)}
    registry = HotKeysRegistry(capacity, 60.0)
    observe = registry.observe
    per_call = []
    clock = time.perf_counter_ns
    for start in range(0, requests - BATCH + 1, BATCH):
        batch = [
            (key, args[key], (start + i) / 1000) for i, key in enumerate(stream[start:][:BATCH])
        ]
        began = clock()
        for key, arguments, now in batch:
            observe("user", key, arguments, now)
        per_call.append((clock() - began) / BATCH)
    return per_call


def missed(capacity: int, n: int = 100, rate: float = 300, seconds: int = 140) -> list[int]:
    """Once a second after 40 s: how many of the C{n} hottest keys are not among the
    2C{n} a sketch of C{capacity} keys ranks first."""
    stream = zipf_keys(10_000, int(rate * seconds), seed=7, s=1.0)
    hottest = {f"rfd:user:v1:id={i}" for i in range(n)}
    registry = HotKeysRegistry(capacity, 60.0)
    counts = []
    for i, key in enumerate(stream):
        registry.observe("user", key, {}, i / rate)
        if i % int(rate) == 0 and i >= 40 * rate:
            ranked = {hot.key for hot in registry.top("user", i / rate, 2 * n)}
            counts.append(len(hottest - ranked))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--ranking", action="store_true", help="how well K keys rank N = 100")
    options = parser.parse_args(argv)
    if options.ranking:
        for capacity in (200, 500, 1000):
            counts = missed(capacity)
            print(
                f"K = {capacity}: of the 100 hottest, not among the 200 ranked first: "
                f"mean {statistics.mean(counts):.1f}, most {max(counts)}"
            )
        return
    medians = [statistics.median(measure(options.requests)) for _ in range(options.rounds)]
    print(
        f"observe: median {statistics.median(medians):.0f} ns per call "
        f"(rounds: {', '.join(f'{m:.0f}' for m in medians)}; "
        f"{options.requests} requests, Zipf 1.1 over 10000 keys, K = 100)"
    )


if __name__ == "__main__":
    main()
