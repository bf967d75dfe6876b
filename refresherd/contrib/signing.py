"""
Checking C{X-Refresherd-Signature} (docs/configuration.md, "Signed requests
(`sign`)"), for an application that refresherd calls back: a C{fetch =
"http"} job whose origin is the application itself sets C{sign =
"env:SECRET"}, and the application answers only requests that carry a fresh
signature it has not seen before.

    X-Refresherd-Signature: t=<unix seconds>,n=<16 random hex>,v1=<hex>

C{<hex>} is the lowercase hex HMAC-SHA256, keyed by the secret's UTF-8 bytes,
of C{"{t}\\n{n}\\n{METHOD}\\n{path and query exactly as sent}\\n"} followed by
the body.  L{check_signature} refuses a malformed header, a C{t} more than
L{WINDOW} seconds from the application's clock, a digest that does not match
(compared in constant time), and a nonce already seen within the window.

Any framework can use it; L{refresherd.contrib.django} does with Django's
cache for the nonces seen, so that they are shared between processes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Iterable

import attrs

SIGNATURE_HEADER = "X-Refresherd-Signature"
WINDOW = 300
"""Seconds a signature's C{t} may be from the application's clock, either way."""

_HEADER = re.compile(r"t=([0-9]{1,15}),n=([0-9a-f]{16}),v1=([0-9a-f]{64})")


class BadSignature(Exception):
    """A request refused: C{reason} says why, for the application's log (not for the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Signature:
    """The parts of an C{X-Refresherd-Signature} header."""

    t: int
    nonce: str
    digest: str


def parse_signature(header: str) -> Signature | None:
    """The parts of a header value, or L{None} when it is not one."""
    match = _HEADER.fullmatch(header.strip())
    if match is None:
        return None
    return Signature(int(match[1]), match[2], match[3])


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def digest(secret: str | bytes, t: int, nonce: str, method: str, target: str, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 that signs a request."""
    message = f"{t}\n{nonce}\n{method.upper()}\n{target}\n".encode() + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, t: int, nonce: str, method: str, target: str, body: bytes) -> str:
    """
    The C{X-Refresherd-Signature} value of a request sent at unix time C{t}
    with C{nonce} (16 lowercase hex characters), C{method}, the request
    target C{target} (path and query, exactly as on the request line) and
    C{body}: what refresherd sends, for tests and for other senders.
    """
    return f"t={t},n={nonce},v1={digest(secret, t, nonce, method, target, body)}"


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


def check_signature(
    secrets: Iterable[str | bytes],
    header: str | None,
    method: str,
    target: str,
    body: bytes,
    remember: Callable[[str, int], bool],
    now: float | None = None,
) -> Signature:
    """
    The signature of a request if it is good, else L{BadSignature}.

    @param secrets: The secrets a signature may be made with (more than one
        while a secret is being replaced).
    @param header: The C{X-Refresherd-Signature} header, L{None} if absent.
    @param target: The request target as received: path and query,
        percent-encoding included, never decoded and encoded again.
    @param remember: Called with the nonce and C{t} of a signature that
        matches: True if the nonce is new (and now remembered for at least
        L{WINDOW} seconds past C{t}), False if it was seen.
    @param now: The application's clock, unix seconds (default: now).
    """
    if header is None:
        raise BadSignature(f"no {SIGNATURE_HEADER} header")
    signature = parse_signature(header)
    if signature is None:
        raise BadSignature(f"malformed {SIGNATURE_HEADER} header")
    now = time.time() if now is None else now
    if abs(now - signature.t) > WINDOW:
        raise BadSignature(f"signature time {signature.t} is more than {WINDOW} s from now")
    keys = [_key(secret) for secret in secrets]
    if not keys:
        raise BadSignature("no secret is configured")
    matched = False
    for key in keys:
        expected = digest(key, signature.t, signature.nonce, method, target, body)
        matched |= hmac.compare_digest(expected, signature.digest)
    if not matched:
        raise BadSignature("the signature does not match the request")
    if not remember(signature.nonce, signature.t):
        raise BadSignature(f"nonce {signature.nonce} was already used (a replay)")
    return signature
