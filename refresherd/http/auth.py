"""
Bearer tokens (docs/README.md, "Authentication"; docs/admin.md, "Who may call it").

Four classes of token: read, write, admin and metrics.  A presented token is
compared with every configured token in constant time (C{hmac.compare_digest},
and always against all of them, so timing tells nothing about which or how
many matched).  No token and an unknown token are 401; a known token of a
class that may not do this is 403.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

import attrs
from twisted.web.http_headers import Headers

from refresherd.config import AuthConfig
from refresherd.errors import Forbidden, Unauthorized

READ, WRITE, ADMIN, METRICS = "read", "write", "admin", "metrics"

READERS = frozenset({READ, WRITE, ADMIN})
WRITERS = frozenset({WRITE, ADMIN})
ADMINS = frozenset({ADMIN})


@attrs.define
class Authorizer:
    """
    Who may do what, by the configured tokens.  One instance serves every
    listener of a process, so that a reload changes the tokens for all at once
    (L{replace}).
    """

    tokens: tuple[tuple[bytes, str], ...]
    """Every configured token with its class."""
    reads_open: bool = attrs.field(init=False, repr=False, eq=False)
    """No read token is configured: reads need none (asked by every read)."""

    @reads_open.default
    def _no_read_token(self) -> bool:
        return not self.configured([READ])

    def replace(self, other: Authorizer) -> None:
        """Authorize from now on as C{other} does (a reload of the tokens)."""
        self.tokens, self.reads_open = other.tokens, other.reads_open

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Authorizer:
        tokens: list[tuple[bytes, str]] = []
        for kind, secrets in (
            (READ, auth.read_tokens),
            (WRITE, auth.write_tokens),
            (ADMIN, auth.admin_tokens),
            (METRICS, auth.metrics_tokens),
        ):
            tokens.extend((secret.value.encode("utf-8"), kind) for secret in secrets)
        return cls(tuple(tokens))

    def configured(self, kinds: Iterable[str]) -> bool:
        wanted = set(kinds)
        return any(kind in wanted for _, kind in self.tokens)

    def token_classes(self, authorization: bytes | None) -> frozenset[str]:
        """
        The classes of the bearer token in an C{Authorization} header: none
        when unknown, several when the token is configured in several.
        """
        if authorization is None:
            return frozenset()
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return frozenset()
        token = token.strip()
        return frozenset([kind for known, kind in self.tokens if hmac.compare_digest(known, token)])

    def require(self, authorization: bytes | None, allowed: frozenset[str]) -> None:
        """Raise unless the header carries a token of one of the C{allowed} classes."""
        kinds = self.token_classes(authorization)
        if not kinds:
            raise Unauthorized("a valid bearer token is required")
        if not kinds & allowed:
            raise Forbidden(f"a {'/'.join(sorted(kinds))} token may not do this")

    def check_read(self, authorization: bytes | None) -> None:
        """Read endpoints are open unless read tokens are configured."""
        if not self.reads_open:
            self.require(authorization, READERS)

    def check_write(self, authorization: bytes | None) -> None:
        """Writes need a write or admin token, and are off when neither class is configured."""
        if not self.configured(WRITERS):
            raise Forbidden("writes are disabled: no write or admin token is configured")
        self.require(authorization, WRITERS)

    def check_head(self, method: bytes, headers: Headers) -> None:
        """
        What a request's head decides before its body is read
        (L{refresherd.http.site}): a PUT, which may send its job's
        C{max_value_bytes}, needs a write token first.  Its route checks again.
        """
        if method.upper() == b"PUT":
            values = headers.getRawHeaders(b"authorization")
            self.check_write(values[-1] if values else None)

    @property
    def admin_open(self) -> bool:
        """
        No admin token is configured: the admin routes need none, and may be
        served only on a loopback listener (checked at start-up).
        """
        return not self.configured([ADMIN])

    def check_admin(self, authorization: bytes | None, writers_too: bool = False) -> None:
        """
        Admin routes need an admin token (or, with C{writers_too}, a write
        token).  With no admin token configured they are open, but a token
        given must still be known.
        """
        if not self.admin_open:
            self.require(authorization, WRITERS if writers_too else ADMINS)
        elif authorization is not None and not self.token_classes(authorization):
            raise Unauthorized("an unknown bearer token")


def is_loopback_ip(host: str) -> bool:
    """Whether C{host} is an address of 127.0.0.0/8 or ::1 (0.0.0.0 and :: are not)."""
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def is_loopback_host(value: bytes | None) -> bool:
    """
    Whether a C{Host} header names this machine by loopback: C{localhost},
    an address of 127.0.0.0/8 or C{[::1]}, with or without a port.  A web page
    on another site that makes an operator's browser post here (DNS
    rebinding, a forged form) sends its own host name instead.
    """
    if not value:
        return False
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        inside, bracket, _ = host[1:].partition("]")
        return bool(bracket) and is_loopback_ip(inside)
    host = host.rpartition(":")[0] if ":" in host else host
    return host == "localhost" or is_loopback_ip(host)
