"""
Jobs for trying refresherd out (C{examples/refresherd.toml}): slow on purpose,
so that single-flight and stale-while-revalidate can be seen.
"""

from __future__ import annotations

import time


def slow_square(n: str) -> dict[str, object]:
    """Square C{n}, taking a second about it: a stand-in for an expensive query."""
    time.sleep(1.0)
    number = int(n)
    return {"n": number, "square": number * number, "computed_at": time.time()}
