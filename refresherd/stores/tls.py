"""
TLS to a store's server, from the options of its URL (docs/redis.md, "TLS"):

    ca=/path           PEM certificates of the CAs to trust (default: the system's)
    cert=/path         the client's PEM certificate (then its chain), for mutual TLS
    key=/path          the client's PEM private key, unencrypted (with cert=)
    server_name=NAME   the name the server's certificate must be valid for (default: the host)
    insecure=true      no verification of the server's certificate at all

L{tls_options} reads and checks the files once, at start-up, and gives a
L{TLSOptions} that wraps any client endpoint in TLS; L{tls_failure} says in
one line why a connection's TLS failed.  Nothing here knows about Redis, so
every URL scheme of a store can use it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

TLS_OPTIONS = ("ca", "cert", "key", "server_name", "insecure")
"""The names of the URL options L{tls_options} reads."""

INSECURE_WARNING = (
    "TLS to {address} does not verify the server's certificate (insecure=true): "
    "anyone on the path can read and change what is stored"
)


@attrs.frozen
class TLSOptions:
    """
    How to talk TLS to a server: L{wrap} an endpoint with it.

    @ivar creator: makes the TLS connection of each new connection.
    @ivar server_name: the name the server's certificate is checked against
        (sent as SNI when it is a DNS name).
    @ivar insecure: whether the server's certificate is left unverified.
    """

    creator: IOpenSSLClientConnectionCreator = attrs.field(repr=False)
    server_name: str
    insecure: bool = False

    def wrap(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """C{endpoint} with TLS on every connection it makes."""
        return wrapClientTLS(self.creator, endpoint)

    def warning(self, address: str) -> str | None:
        """What to warn of at start, talking to C{address}: only an insecure connection."""
        return INSECURE_WARNING.format(address=address) if self.insecure else None


def tls_options(options: Mapping[str, str], host: str, what: str) -> TLSOptions:
    """
    The L{TLSOptions} of a URL's options (L{TLS_OPTIONS}; others are ignored)
    to a server at C{host}.  The files are read now; anything wrong (a file
    that cannot be read or holds no such PEM data, a key that is not the
    certificate's, C{cert} without C{key}) is a L{ValueError} with a one-line
    message starting with C{what}.
    """
    insecure = _flag(options.get("insecure", "false"), "insecure", what)
    if insecure and "ca" in options:
        raise ValueError(f"{what}: insecure=true verifies nothing, so it takes no ca=")
    server_name = options.get("server_name", host)
    if "cert" in options or "key" in options:
        if "cert" not in options or "key" not in options:
            raise ValueError(f"{what}: cert= and key= go together (the client's certificate)")
        chain = _certificates(options["cert"], "cert", what)
        key, public = _private_key(options["key"], what)
        if public != _public(chain[0].public_key()):
            raise ValueError(
                f"{what}: the key file {options['key']!r} is not the key of the "
                f"certificate in {options['cert']!r}"
            )
    else:
        chain, key = [], None
    trust = None if "ca" not in options else _certificates(options["ca"], "ca", what)
    if insecure:
        creator: IOpenSSLClientConnectionCreator = _Unverified(
            ssl.CertificateOptions(
                verify=False,
                privateKey=key,
                certificate=None if not chain else crypto.X509.from_cryptography(chain[0]),
                **_chain(chain),
            ),
            server_name,
        )
        return TLSOptions(creator, server_name, insecure=True)
    client = None
    if key is not None:
        client = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(crypto.X509.from_cryptography(chain[0])),
            ssl.KeyPair(key),
        )
    try:
        creator = ssl.optionsForClientTLS(
            server_name,
            trustRoot=(
                ssl.platformTrust()
                if trust is None
                else ssl.trustRootFromCertificates(
                    [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in trust]
                )
            ),
            clientCertificate=client,
            extraCertificateOptions=_chain(chain),
        )
    except UnicodeError:
        raise ValueError(f"{what}: server_name {server_name[:60]!r} is not a host name") from None
    return TLSOptions(creator, server_name)


def tls_failure(reason: Failure) -> str | None:
    """
    Why a connection's TLS failed, in one line for an operator; None when
    C{reason} is not a TLS failure (a connection lost for another reason).
    """
    if reason.check(VerificationError):
        names = [
            getattr(error.mismatched_id, "hostname", None) or getattr(error.mismatched_id, "ip", "")
            for error in getattr(reason.value, "errors", [])
            if hasattr(error, "mismatched_id")
        ]
        name = names[0] if names else ""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        which = f" {str(name)!r}" if name else " the server name"
        return (
            "the server's certificate did not verify: it is not valid for"
            f"{which} (set server_name= to the name it is for)"
        )
    if reason.check(SSL.Error):
        said = _openssl_reasons(reason.value) if reason.value is not None else ""
        if "certificate verify failed" in said:
            return (
                "the server's certificate did not verify: no CA trusted here signed it, or "
                "it has expired (set ca= to the CA's certificate file)"
            )
        if "certificate required" in said or "handshake failure" in said:
            return f"the TLS handshake failed ({said}): does the server want cert= and key=?"
        return f"the TLS handshake failed ({said})"
    return None


def _openssl_reasons(error: BaseException) -> str:
    """The reasons of a pyOpenSSL error: C{[(library, function, reason), ...]}."""
    errors = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [str(e[-1]) for e in errors if isinstance(e, tuple) and e]
    return "; ".join(reasons) or str(error) or type(error).__name__


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class _Unverified:
    """TLS that checks nothing of the server's certificate, still sending SNI."""

    options: ssl.CertificateOptions
    server_name: str

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection: SSL.Connection = self.options.clientConnectionForTLS(tlsProtocol)
        if not _is_address(self.server_name):
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        return connection


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _chain(chain: list[x509.Certificate]) -> dict[str, Any]:
    """The client certificate's intermediate CAs, if its file has them."""
    if len(chain) < 2:
        return {}
    return {"extraCertChain": [crypto.X509.from_cryptography(c) for c in chain[1:]]}


def _flag(value: str, name: str, what: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"{what}: {name} must be true or false, not {value[:20]!r}")
    return value.lower() == "true"


def _read(path: str, option: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise ValueError(
            f"{what}: the {option} file {path!r} cannot be read: {e.strerror or e}"
        ) from None


def _certificates(path: str, option: str, what: str) -> list[x509.Certificate]:
    """The PEM certificates of a file, at least one."""
    data = _read(path, option, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(f"{what}: the {option} file {path!r} holds no PEM certificate")
    return certificates


def _private_key(path: str, what: str) -> tuple[crypto.PKey, bytes]:
    """The PEM private key of a file, and its public key (DER)."""
    data = _read(path, "key", what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
        return crypto.PKey.from_cryptography_key(key), _public(key.public_key())  # type: ignore[arg-type]
    except TypeError as e:
        if "encrypted" not in str(e):
            raise ValueError(f"{what}: the key file {path!r} holds a key TLS cannot use") from None
        raise ValueError(
            f"{what}: the key file {path!r} is encrypted; give it unencrypted "
            "(readable only by refresherd's user)"
        ) from None
    except (ValueError, crypto.Error):
        raise ValueError(f"{what}: the key file {path!r} holds no PEM private key") from None


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
