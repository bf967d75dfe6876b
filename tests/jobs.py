"""Python jobs that refresherd's end-to-end tests configure as C{tests.jobs:<name>}."""

from __future__ import annotations

import os


def pid(**args: str) -> int:
    """The process that fetched: with a fresh argument per request, which worker answered."""
    return os.getpid()
