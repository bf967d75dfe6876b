"""
What the fault-injection tests share: the e2e origin (C{origin}), a
redis-server of the test's own (C{redis}: the test may kill it), and a
L{Fleet} of refresherd processes killed when the test ends (C{fleet}).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAILED
from tests.e2e.conftest import origin
from tests.fleet import Fleet
from tests.harness import Origin
from tests.redis_server import RedisServer

__all__ = ["origin", "redis", "fleet"]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, on a free loopback port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path, origin: Origin) -> Iterator[Fleet]:
    """
    Refresherd processes on the origin, started by the test, killed when it
    ends; when the test failed, what each process logged is printed (pytest
    shows it with the failure).
    """
    fleet = Fleet(tmp_path, origin)
    yield fleet
    fleet.kill_all()
    if request.node.stash.get(FAILED, False):
        for i, service in enumerate(fleet.services):
            print(f"--- refresherd {i} logged:\n{service.output()}")
