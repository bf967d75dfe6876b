"""
C{GET /v1/status} (docs/admin.md): what the service does now, as JSON, from
the jobs' tallies over the last minute (L{refresherd.core.recent}).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from refresherd.core.recent import (
    ANSWERS,
    DURATIONS,
    FAILURES,
    FETCHES,
    WINDOW,
    Tally,
    merge,
    quantile,
)


@attrs.frozen
class StoreStatus:
    """The store as C{GET /v1/status} shows it."""

    kind: str
    ready: bool
    bytes: int | None = None
    entries: int | None = None


def _rate(count: int, span: float) -> float:
    return round(count / span, 6)


def _figures(tally: Tally, span: float) -> dict[str, Any]:
    """What a job (or all of them) did over C{span} seconds."""
    counts = tally.counts
    requests = sum(counts[: len(ANSWERS)])
    fetches, failed = counts[FETCHES], counts[FAILURES]
    return {
        "requests": requests,
        "requests_per_second": _rate(requests, span),
        "answers": {
            kind: round(counts[index] / requests, 6) if requests else 0.0
            for index, kind in enumerate(ANSWERS)
        },
        "fetches": fetches,
        "fetches_per_second": _rate(fetches, span),
        "failed_fetches": failed,
        "errors_per_second": _rate(failed, span),
        "error_ratio": round(failed / fetches, 6) if fetches else 0.0,
        "in_flight": tally.in_flight,
        "queued": tally.queued,
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def status_document(
    *,
    version: str,
    now: float,
    started: float,
    store: StoreStatus,
    jobs: Iterable[str],
    tallies: Mapping[str, Tally],
) -> dict[str, Any]:
    """
    The document of C{GET /v1/status}: each of C{jobs} with its tally (an
    empty one if none), sorted by name; the totals over every tally (requests
    for jobs not configured included).
    """
    uptime = max(0.0, now - started)
    span = min(float(WINDOW), max(1.0, uptime))
    total = merge([{"all": tally} for tally in tallies.values()], ["all"])["all"]
    shown = []
    for name in sorted(jobs):
        tally = tallies.get(name) or Tally()
        durations = tally.counts[DURATIONS:]
        figures = _figures(tally, span)
        figures.update(
            fetch_p50_seconds=_seconds(quantile(durations, 0.5)),
            fetch_p99_seconds=_seconds(quantile(durations, 0.99)),
            last_errors=[{"time": time, "message": message} for time, message in tally.errors],
        )
        shown.append({"name": name, **figures})
    return {
        "version": version,
        "now": now,
        "started": started,
        "uptime_seconds": round(uptime, 3),
        "window_seconds": round(span, 3),
        "store": attrs.asdict(store),
        "totals": _figures(total, span),
        "jobs": shown,
    }


def status_json(**fields: Any) -> bytes:
    """L{status_document} as JSON bytes."""
    return json.dumps(status_document(**fields), separators=(",", ":")).encode("utf-8")
