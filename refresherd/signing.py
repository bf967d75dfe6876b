"""
The signature of refresherd's requests to the origins of C{sign} jobs, in one
place (docs/configuration.md, "Signed requests (`sign`)"): made here for the
HTTP fetcher (L{refresherd.fetchers.http}), checked here for applications
(L{refresherd.contrib.signing}).

    X-Refresherd-Signature: t=<unix seconds>,n=<16 random hex>,v1=<hex>

C{<hex>} is the lowercase hex HMAC-SHA256, keyed by the secret's UTF-8 bytes,
of C{"{t}\\n{n}\\n{METHOD}\\n{path and query exactly as sent}\\n"} followed by
the body (L{message}).  L{check_signature} refuses a malformed header, a C{t}
more than L{WINDOW} seconds from the checker's clock, a digest that does not
match (compared in constant time), and a nonce already seen within the window.

Pure Python, the standard library and attrs only: both the server and the
applications it calls import it, so it imports neither Twisted nor Django.
"""

from __future__ import annotations

import hashlib
import hmac
import re
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


def message(t: int, nonce: str, method: str, target: str, body: bytes) -> bytes:
    """
    The bytes that are signed: C{t}, C{nonce}, the method in upper case and
    the request target (path and query, exactly as on the request line), each
    followed by a newline, then the body.
    """
    return f"{t}\n{nonce}\n{method.upper()}\n{target}\n".encode() + body


def digest(secret: str | bytes, t: int, nonce: str, method: str, target: str, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 that signs a request."""
    signed = message(t, nonce, method, target, body)
    return hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, t: int, nonce: str, method: str, target: str, body: bytes) -> str:
    """
    The C{X-Refresherd-Signature} value of a request sent at unix time C{t}
    with C{nonce} (16 lowercase hex characters), C{method}, the request
    target C{target} (path and query, exactly as on the request line, for
    example C{"/users/bob%2F1/tweets?page=2"}) and C{body}: what refresherd
    sends, and what tests and other senders may send.

    @param secret: The job's C{sign} secret; a L{str} is keyed by its UTF-8
        bytes.
    """
    return f"t={t},n={nonce},v1={digest(secret, t, nonce, method, target, body)}"


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
