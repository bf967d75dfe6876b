"""
Tracing for C{bench.keep_hot --trace}: imported at start-up by the refresherd
process the benchmark starts (this directory is put first on its
C{PYTHONPATH}), it records to the file named by C{KEEP_HOT_TRACE}, one JSON
object per line, what refresh-ahead does: the keys it keeps hot at each look
(C{kept}), and each background refresh's start and end (C{start}, C{end}).
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
            fresh_until=entry.fresh_until if entry is not None else None,
        )
        return answer

    Refresher.refresh_background = refresh_background  # type: ignore[method-assign]

    import atexit

    atexit.register(out.close)
