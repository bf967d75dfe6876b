"""
Checking C{X-Refresherd-Signature} (docs/configuration.md, "Signed requests
(`sign`)"), for an application that refresherd calls back: a C{fetch =
"http"} job whose origin is the application itself sets C{sign =
"env:SECRET"}, and the application answers only requests that carry a fresh
signature it has not seen before.

    X-Refresherd-Signature: t=<unix seconds>,n=<16 random hex>,v1=<hex>

L{check_signature} refuses a malformed header, a C{t} more than L{WINDOW}
seconds from the application's clock, a digest that does not match (compared
in constant time), and a nonce already seen within the window.  The signature
itself, made and checked, is L{refresherd.signing}, the one that refresherd's
HTTP fetcher signs with; its names are importable from here too.
L{NonceMemory} keeps the nonces seen, for a single process.

Any framework can use it; L{refresherd.contrib.django} does with Django's
cache for the nonces seen, so that they are shared between processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from refresherd.signing import (
    SIGNATURE_HEADER,
    WINDOW,
    BadSignature,
    Signature,
    check_signature,
    digest,
    parse_signature,
    sign,
)

__all__ = [
    "SIGNATURE_HEADER",
    "WINDOW",
    "BadSignature",
    "NonceMemory",
    "Signature",
    "check_signature",
    "digest",
    "parse_signature",
    "sign",
]


class NonceMemory:
    """
    The nonces seen within the window, in this process only: enough for one
    process (a test, a single-process app).  An application of several
    processes keeps them where all of them see them (Django: its cache).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def remember(self, nonce: str, t: int) -> bool:
        """True, and remembered, if C{nonce} is new; False if it was seen within the window."""
        now = self._clock()
        with self._lock:
            for old, until in list(self._seen.items()):
                if until < now:
                    del self._seen[old]
            if nonce in self._seen:
                return False
            self._seen[nonce] = max(now, t) + WINDOW
            return True
