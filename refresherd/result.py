"""
L{Result}: what a python job's function may return to set its entry's own
windows, tags and content type (docs/configuration.md, "Python jobs").

No Twisted here: C{refresherd} exports L{Result}, and the client side imports
C{refresherd} too.  The python fetcher checks a L{Result}'s fields when it
stores it (L{refresherd.fetchers.python.to_fetched}).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import attrs

Seconds = float | timedelta
"""A window: seconds (an C{int} or a C{float}) or a L{timedelta}."""


@attrs.frozen
class Result:
    """
    A python job's value with what it says about its own entry.

    @ivar value: Stored as a plain result would be: C{bytes} as they are,
        C{str} as UTF-8 text, anything else as compact JSON.
    @ivar fresh: How long the entry is fresh, or C{None} for the job's
        C{fresh}.
    @ivar stale: How long it is then served stale while it is refreshed, or
        C{None} for the job's C{stale}.
    @ivar stale_if_error: How long after C{fresh} it is served stale while
        refreshes fail, or C{None} for the job's C{stale_if_error}.
    @ivar tags: Tags of the entry beyond its job's: purges by tag reach it.
    @ivar content_type: The stored content type instead of the one the type
        of C{value} gives, or C{None}.
    """

    value: object
    fresh: Seconds | None = attrs.field(default=None, kw_only=True)
    stale: Seconds | None = attrs.field(default=None, kw_only=True)
    stale_if_error: Seconds | None = attrs.field(default=None, kw_only=True)
    tags: Iterable[str] = attrs.field(default=(), kw_only=True)
    content_type: str | None = attrs.field(default=None, kw_only=True)
