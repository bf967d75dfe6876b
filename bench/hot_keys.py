"""
The cost of C{HotKeysRegistry.observe}, the call a lookup makes on every
request: nanoseconds per call on a Zipf stream (exponent 1.1) over 10,000
keys, K = 100, a thousand requests a second of fake time; the median of
rounds, each timing batches of calls.

    .venv/bin/python -m bench.hot_keys [--rounds 5] [--requests 200000]

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200_000)
    options = parser.parse_args(argv)
    medians = [statistics.median(measure(options.requests)) for _ in range(options.rounds)]
    print(
        f"observe: median {statistics.median(medians):.0f} ns per call "
        f"(rounds: {', '.join(f'{m:.0f}' for m in medians)}; "
        f"{options.requests} requests, Zipf 1.1 over 10000 keys, K = 100)"
    )


if __name__ == "__main__":
    main()
