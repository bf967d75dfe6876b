"""
Python jobs that use asyncio, for C{tests.e2e.test_fetch_python_asyncio}; named as
C{tests.asyncio_jobs:<name>}.  They need twistd's asyncio reactor.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


async def mixed(name: str) -> dict[str, Any]:
    """Await an asyncio future and a Deferred, inside a real asyncio Task."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await asyncio.sleep(0.01)
    later = await deferLater(reactor, 0.01, lambda: f"later {name}")
    await asyncio.sleep(0)
    return {
        "name": name,
        "deferred": later,
        "task": asyncio.current_task() is not None,
        "thread": threading.current_thread() is threading.main_thread(),
    }
