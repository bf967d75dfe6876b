"""
Tracing for C{bench.keep_hot --trace}: imported at start-up by the refresherd
process the benchmark starts (this directory is put first on its
C{PYTHONPATH}), it records to the file named by C{KEEP_HOT_TRACE}, one JSON
object per line, what refresh-ahead does: the keys it keeps hot at each look
(C{kept}), each soft purge's regeneration (C{purge}: the keys kept that it
covers, and those of them whose refresh was running), and each background
refresh's start and end (C{start}, C{end}, with the C{fetched_at} written).
Nothing of refresherd is changed but these records.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

PATH = os.environ.get("KEEP_HOT_TRACE")

if PATH:
    from refresherd.core import ahead
    from refresherd.core.refresher import Refresher

    out = open(PATH, "w", buffering=1 << 16)  # noqa: SIM115 (open for the process's life)

    def record(**fields: Any) -> None:
        fields["t"] = time.time()
        out.write(json.dumps(fields) + "\n")

    looks = "kept" if hasattr(ahead.Ahead, "kept") else "hottest"
    original_kept = getattr(ahead.Ahead, looks)

    def kept(self: Any, now: float) -> Any:
        targets = original_kept(self, now)
        record(e="kept", ids=[t.args["id"] for t in targets])
        return targets

    setattr(ahead.Ahead, looks, kept)

    original_refresh = Refresher.refresh_background

    async def refresh_background(self: Any, target: Any, reason: str, lead: float = 0.0) -> Any:
        record(e="start", id=target.args.get("id"), reason=reason, lead=lead)
        try:
            answer = await original_refresh(self, target, reason, lead)
        except Exception as e:
            record(e="end", id=target.args.get("id"), reason=reason, error=type(e).__name__)
            raise
        entry = answer.entry
        record(
            e="end",
            id=target.args.get("id"),
            reason=reason,
            status=answer.status,
            fetched_at=entry.fetched_at if entry is not None else None,
            fresh_until=entry.fresh_until if entry is not None else None,
        )
        return answer

    Refresher.refresh_background = refresh_background  # type: ignore[method-assign]

    original_regenerate = ahead.Ahead.regenerate

    def regenerate(self: Any, keys: Any, jobs: Any, tags: Any) -> int:
        keys, jobs, tags = list(keys), list(jobs), list(tags)
        now = self.clock.seconds()
        targets = original_kept(self, now)
        covered = self.refresher.covered(targets, keys, jobs, tags)
        record(
            e="purge",
            tags=tags,
            covered=[t.args.get("id") for t in covered],
            running=[t.args.get("id") for t in covered if t.key in self._running],
        )
        return original_regenerate(self, keys, jobs, tags)

    ahead.Ahead.regenerate = regenerate  # type: ignore[method-assign]

    import atexit

    atexit.register(out.close)
