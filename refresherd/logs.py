"""
C{--log-format json}: one JSON object per line on standard output.

twistd sets up logging after the service is made, from an C{ILogObserver}
component of the application if it has one; L{RefresherdService} sets that
component when asked for JSON.  (twisted.logger's C{jsonFileLogObserver}
starts every record with C{\\x1e}, which is not plain JSON lines.)
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

_SKIP = {"log_format", "log_logger", "log_source", "log_time", "log_level", "log_namespace"}


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out or sys.stdout

    def __call__(self, event: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for name, value in event.items():
            if name in _SKIP or name in record or name.startswith("_"):
                continue
            if name == "log_failure":
                record["failure"] = value.getTraceback()
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                value = repr(value)
            record[name] = value
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()
