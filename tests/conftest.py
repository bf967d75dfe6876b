"""
Every test fails if it logs an error (a failure or an unhandled error in a
Deferred) that it did not expect: errors must never pass unseen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher


@pytest.fixture(autouse=True)
def no_logged_errors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Collects error events; a test that expects some empties the list it gets."""
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)
    if errors:
        pytest.fail("errors were logged:\n" + "\n".join(formatEvent(e) for e in errors))
