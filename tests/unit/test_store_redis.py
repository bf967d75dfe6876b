"""
The Redis store without a server: the names of its lease keys, how a Redis
Cluster node is told (C{INFO cluster}), calls before it starts, and its URLs
(redis://, rediss:// with its TLS options, unix://): what they configure, and
what they refuse in one line that never shows the password; what a failed TLS
connection is told as (the store on a real Redis:
tests/integration/test_store_redis.py, test_store_redis_urls.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.exceptions import DNSMismatch
from service_identity.hazmat import DNS_ID
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from refresherd.errors import StoreUnavailable
from refresherd.keys import MAX_KEY_BYTES, entry_key
from refresherd.stores.redis import DEFAULT_PORT, RedisStore, cluster_enabled, lease_key
from refresherd.stores.redis_urls import credentials, redis_store_from_url, url_options
from refresherd.stores.tls import tls_failure, tls_options
from tests.redis_server import TLSFiles


@pytest.mark.parametrize(
    ("info", "cluster"),
    [
        (b"# Cluster\r\ncluster_enabled:1\r\n", True),
        (b"# Cluster\ncluster_enabled:1", True),
        (b"# Cluster\r\ncluster_enabled:0\r\n", False),
        (b"", False),  # a server with no cluster section
        (b"# Cluster\r\ncluster_enabled:10\r\n", False),
        (b"# Other\r\nnot_cluster_enabled:1\r\n", False),
        (None, False),  # a reply that is not the bulk string INFO answers
        ([b"cluster_enabled:1"], False),
    ],
)
def test_a_cluster_node_is_told_by_the_cluster_enabled_line_only(
    info: object, cluster: bool
) -> None:
    assert cluster_enabled(info) is cluster


class RedisStoreTests(TestCase):
    """What the store does before it connects to anything."""

    def test_lease_key_names(self) -> None:
        self.assertEqual(
            lease_key("rfd:tweets:v1:username=bob"), "rfd:lease:tweets:v1:username=bob"
        )
        self.assertEqual(lease_key("rfd:report:v1:"), "rfd:lease:report:v1:")
        longest = entry_key("n" * 64, "j" * 64, 10**9, {"q": "x" * 300})
        self.assertIn(":#", longest)
        self.assertLessEqual(len(lease_key(longest)), 250)
        unhashed = entry_key("n", "j", 1, {"q": "x" * (MAX_KEY_BYTES - 9)})
        self.assertEqual(len(unhashed), MAX_KEY_BYTES)
        self.assertLessEqual(len(lease_key(unhashed)), 250)

    async def test_calls_before_start_fail_at_once(self) -> None:
        store = RedisStore(reactor, "127.0.0.1", DEFAULT_PORT)
        with self.assertRaises(StoreUnavailable):
            await store.ping()


SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("redis://127.0.0.1:6380/2", {}, ("127.0.0.1", 6380, 2, None, None)),
        ("redis://localhost", {}, ("localhost", DEFAULT_PORT, 0, None, None)),
        ("redis://localhost/", {}, ("localhost", DEFAULT_PORT, 0, None, None)),
        ("redis://localhost:6379", {}, ("localhost", 6379, 0, None, None)),
        ("REDIS://Redis.Example:1/15", {}, ("redis.example", 1, 15, None, None)),
        ("redis://[::1]:6379/0", {}, ("::1", 6379, 0, None, None)),
        ("redis://:pw@host:6379/0", {}, ("host", 6379, 0, None, "pw")),
        ("redis://:pw:2@host:6379/0", {}, ("host", 6379, 0, None, "pw:2")),
        ("redis://:p%40ss%2Fw%3Ard@host/3", {}, ("host", DEFAULT_PORT, 3, None, "p@ss/w:rd")),
        ("redis://:env:RFD_PW@host:6379/0", {"RFD_PW": "pw"}, ("host", 6379, 0, None, "pw")),
        ("redis://app:pw@host:6379/1", {}, ("host", 6379, 1, "app", "pw")),
        ("redis://app%40eu:p%3Aw@host/1", {}, ("host", DEFAULT_PORT, 1, "app@eu", "p:w")),
        ("redis://app:env:RFD_PW@host", {"RFD_PW": "pw"}, ("host", DEFAULT_PORT, 0, "app", "pw")),
    ],
)
def test_redis_store_from_url(
    url: str, environ: dict[str, str], expected: tuple[str, int, int, str | None, str | None]
) -> None:
    store = redis_store_from_url(url, "ns", reactor, environ)
    assert (store.host, store.port, store.db, store.username, store.password) == expected
    assert store.namespace == "ns"
    assert store.reactor is reactor
    assert store.endpoint is None and store.label is None and store.warning is None
    assert "pw" not in repr(store) and "env" not in repr(store)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("unix:///run/redis/redis.sock", ("/run/redis/redis.sock", 0, None, None)),
        ("unix:///run/redis.sock?db=3", ("/run/redis.sock", 3, None, None)),
        ("UNIX:///run/my%20redis.sock?db=1", ("/run/my redis.sock", 1, None, None)),
        ("unix://:pw@/run/redis.sock?db=2", ("/run/redis.sock", 2, None, "pw")),
        ("unix://app:p%2Fw@/run/redis.sock", ("/run/redis.sock", 0, "app", "p/w")),
        ("unix://app:env:RFD_PW@/run/redis.sock?db=4", ("/run/redis.sock", 4, "app", "from env")),
    ],
)
def test_unix_store_from_url(url: str, expected: tuple[str, int, str | None, str | None]) -> None:
    """A UNIX socket: the endpoint connects to the path, which names the server in messages."""
    store = redis_store_from_url(url, "ns", reactor, {"RFD_PW": "from env"})
    assert (store.label, store.db, store.username, store.password) == expected
    assert store.address == expected[0]
    assert isinstance(store.endpoint, UNIXClientEndpoint)
    assert store.endpoint._path == expected[0]
    assert "pw" not in repr(store)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.make(str(tmp_path_factory.mktemp("tls")))


def test_rediss_store_from_url(certificates: TLSFiles) -> None:
    """rediss:// wraps TCP to host:port in TLS; the address stays host:port; no warning."""
    url = f"rediss://app:pw@redis.example:6380/2?ca={certificates.ca}"
    store = redis_store_from_url(url, "ns", reactor, {})
    assert (store.host, store.port, store.db, store.username, store.password) == (
        "redis.example",
        6380,
        2,
        "app",
        "pw",
    )
    assert store.address == "redis.example:6380"
    assert store.endpoint is not None and store.warning is None
    assert store.endpoint._wrappedEndpoint._hostText == "redis.example"  # type: ignore[attr-defined]


def test_rediss_insecure_is_warned_of(certificates: TLSFiles) -> None:
    store = redis_store_from_url("rediss://redis.example?insecure=true", "ns", reactor, {})
    assert store.warning is not None
    assert "does not verify the server's certificate (insecure=true)" in store.warning
    assert "redis.example:6379" in store.warning


def test_tls_options(certificates: TLSFiles) -> None:
    """The server name is the host unless given; the system's CAs unless ca= is given."""
    assert tls_options({}, "redis.example", "u").server_name == "redis.example"
    given = tls_options({"server_name": "cache.internal"}, "10.0.0.1", "u")
    assert (given.server_name, given.insecure) == ("cache.internal", False)
    mutual = tls_options(
        {
            "ca": certificates.ca,
            "cert": certificates.client_cert,
            "key": certificates.client_key,
        },
        "127.0.0.1",
        "u",
    )
    assert not mutual.insecure
    assert tls_options({"insecure": "TRUE"}, "h", "u").insecure
    assert not tls_options({"insecure": "false"}, "h", "u").insecure


def test_client_certificate_file_may_hold_its_chain(tmp_path: Path) -> None:
    authority = trustme.CA()
    intermediate = authority.create_child_ca()
    leaf = intermediate.issue_cert("client.example")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key = tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    options = tls_options({"cert": str(chain), "key": str(key)}, "h", "u")
    assert not options.insecure


@pytest.fixture
def files(tmp_path: Path, certificates: TLSFiles) -> dict[str, str]:
    """Files that are wrong in each way, by name."""
    paths = {
        "missing": str(tmp_path / "missing.pem"),
        "text": str(tmp_path / "text.pem"),
        "encrypted": str(tmp_path / "encrypted.pem"),
        "other_key": str(tmp_path / "other_key.pem"),
        "directory": str(tmp_path),
    }
    Path(paths["text"]).write_text(f"not a certificate {SECRET}\n")
    key = serialization.load_pem_private_key(Path(certificates.client_key).read_bytes(), None)
    Path(paths["encrypted"]).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(paths["other_key"])
    paths.update(ca=certificates.ca, cert=certificates.client_cert, key=certificates.client_key)
    return paths


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("ca={missing}", "the ca file '{missing}' cannot be read: No such file or directory"),
        ("ca={directory}", "the ca file '{directory}' cannot be read: Is a directory"),
        ("ca={text}", "the ca file '{text}' holds no PEM certificate"),
        ("ca={key}", "the ca file '{key}' holds no PEM certificate"),
        ("cert={cert}", "cert= and key= go together"),
        ("key={key}", "cert= and key= go together"),
        ("cert={text}&key={key}", "the cert file '{text}' holds no PEM certificate"),
        ("cert={missing}&key={key}", "the cert file '{missing}' cannot be read"),
        ("cert={cert}&key={missing}", "the key file '{missing}' cannot be read"),
        ("cert={cert}&key={text}", "the key file '{text}' holds no PEM private key"),
        ("cert={cert}&key={cert}", "the key file '{cert}' holds no PEM private key"),
        ("cert={cert}&key={encrypted}", "the key file '{encrypted}' is encrypted"),
        ("cert={cert}&key={other_key}", "is not the key of the certificate in '{cert}'"),
        ("insecure=yes", "insecure must be true or false, not 'yes'"),
        ("insecure=1", "insecure must be true or false"),
        ("insecure=true&ca={ca}", "insecure=true verifies nothing, so it takes no ca="),
        ("server_name=a..b", "server_name 'a..b' is not a host name"),
        ("ca=", "ca needs a value (ca=...)"),
        ("ca", "ca needs a value"),
        ("ca={ca}&ca={ca}", "gives ca twice"),
        (f"password={SECRET}", "the rediss store URL takes no option 'password'; it takes ca, "),
        ("db=1", "takes no option 'db'"),
        (f"{SECRET}", "takes no option"),
    ],
)
def test_rediss_store_from_url_refuses(files: dict[str, str], query: str, message: str) -> None:
    """Each TLS option wrong in each way: one line, at start-up, naming the file."""
    url = f"rediss://:{SECRET}@redis.example:6380/0?" + query.format(**files)
    with pytest.raises(ValueError, match=re.escape(message.format(**files))) as raised:
        redis_store_from_url(url, "ns", reactor, {})
    text = str(raised.value)
    assert text.startswith("the rediss store URL")
    assert "\n" not in text
    assert "passphrase" not in text
    assert raised.value.__cause__ is None
    if not query.startswith(SECRET):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("url", "environ", "message"),
    [
        ("redis+sentinel://host:6379/0", {}, "must start with redis://, rediss:// or unix://"),
        ("memcached://host:11211", {}, "must start with redis://, rediss:// or unix://"),
        (f"http://:{SECRET}@host", {}, "must start with redis://"),
        (f"host:6379:{SECRET}", {}, "must start with redis://"),
        ("redis://", {}, "has no host"),
        ("rediss://", {}, "the rediss store URL has no host"),
        (f"redis://:{SECRET}@:6379/0", {}, "has no host"),
        ("redis://host:port/0", {}, "needs a port from 1 to 65535"),
        ("redis://host:0/0", {}, "needs a port from 1 to 65535"),
        ("redis://host:65536/0", {}, "needs a port from 1 to 65535"),
        ("rediss://host:65536/0", {}, "the rediss store URL needs a port from 1 to 65535"),
        (f"redis://:{SECRET}@host:x{SECRET}/0", {}, "needs a port from 1 to 65535"),
        ("redis://host:6379/db0", {}, "path must be a database number"),
        ("redis://host:6379/0/1", {}, "path must be a database number"),
        ("redis://host:6379/-1", {}, "path must be a database number"),
        ("rediss://host/x", {}, "path must be a database number, as in rediss://host:6379/0"),
        (f"redis://:se/{SECRET}@host:6379/0", {}, "percent-encode any of : / ? # @"),
        ("redis://host:6379/0?timeout=1", {}, "the redis store URL takes no option 'timeout'"),
        ("redis://host/0?ca=/etc/ca.pem", {}, "takes no option 'ca' (TLS needs rediss://)"),
        ("redis://host/0?insecure=true", {}, "takes no option 'insecure' (TLS needs rediss://)"),
        (f"redis://host/0?password={SECRET}", {}, "takes no option 'password'"),
        (f"redis://:se#{SECRET}@host:6379/0", {}, "percent-encode any of : / ? # @"),
        (f"redis://:se?{SECRET}@host:6379/0", {}, "percent-encode any of : / ? # @"),
        (f"redis://:{SECRET}@host:6379/0#x", {}, "takes no fragment"),
        (f"redis://{SECRET}@host:6379/0", {}, "gives a user name but no password"),
        (f"rediss://{SECRET}@host:6379/0", {}, "gives a user name but no password"),
        ("redis://:@host:6379/0", {}, "has an empty password"),
        ("redis://user:@host:6379/0", {}, "has an empty password"),
        ("redis://:env:RFD_PW@host:6379/0", {}, "environment variable 'RFD_PW' is not set"),
        ("redis://:env:RFD_PW@host:6379/0", {"RFD_PW": ""}, "'RFD_PW' is empty"),
        ("redis://app:env:RFD_PW@host", {}, "environment variable 'RFD_PW' is not set"),
        ("redis://:env:@host:6379/0", {}, '"env:" needs the name of an environment variable'),
        (f"redis://:env:{SECRET}-x@host/0", {}, '"env:" needs the name'),
        ("unix://", {}, "the unix store URL needs the socket's absolute path"),
        ("unix:///", {}, "needs the socket's absolute path: unix:///path/to/redis.sock"),
        ("unix://redis.sock", {}, "the unix store URL takes no host: unix:///path/to/redis.sock"),
        ("unix://localhost/run/redis.sock", {}, "takes no host"),
        (f"unix://:{SECRET}@host/run/redis.sock", {}, "takes no host"),
        (f"unix://:se/{SECRET}@/run/redis.sock", {}, "percent-encode any of : / ? # @"),
        ("unix:///run/redis.sock?db=x", {}, "db must be a database number, not 'x'"),
        ("unix:///run/redis.sock?db=-1", {}, "db must be a database number"),
        ("unix:///run/redis.sock?db=1&db=2", {}, "gives db twice"),
        ("unix:///run/redis.sock?ca=/ca.pem", {}, "takes no option 'ca' (TLS needs rediss://)"),
        (f"unix:///run/r.sock?password={SECRET}", {}, "takes no option 'password'; it takes db"),
        ("unix:///run/redis.sock#x", {}, "the unix store URL takes no fragment"),
        (f"unix://{SECRET}@/run/redis.sock", {}, "gives a user name but no password"),
        ("unix://:@/run/redis.sock", {}, "has an empty password"),
        ("unix://:env:RFD_PW@/run/redis.sock", {}, "environment variable 'RFD_PW' is not set"),
    ],
)
def test_redis_store_from_url_refuses(url: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        redis_store_from_url(url, "ns", reactor, environ)
    text = str(raised.value)
    assert "\n" not in text
    assert SECRET not in text
    assert raised.value.__cause__ is None


def test_credentials_and_options_for_other_schemes() -> None:
    """The parts another URL scheme of Redis calls: credentials and a query's options."""
    environ = {"PW": "from env"}
    assert credentials(None, None, environ, "u") == (None, None)
    assert credentials("", "p%20w", environ, "u") == (None, "p w")
    assert credentials("app", "env:PW", environ, "u") == ("app", "from env")
    with pytest.raises(ValueError, match="^u gives a user name but no password"):
        credentials(SECRET, None, environ, "u")
    assert url_options("a=1&b=%2Fx&&", ("a", "b"), "u") == {"a": "1", "b": "/x"}
    with pytest.raises(ValueError, match="^u takes no option 'c'; it takes a, b$"):
        url_options("c=1", ("a", "b"), "u")


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("other.example"))]),
            "the server's certificate did not verify: it is not valid for 'other.example' "
            "(set server_name= to the name it is for)",
        ),
        (
            SSL.Error([("SSL routines", "", "certificate verify failed")]),
            "the server's certificate did not verify: no CA trusted here signed it, or it has "
            "expired (set ca= to the CA's certificate file)",
        ),
        (
            SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]),
            "the TLS handshake failed (tlsv13 alert certificate required): "
            "does the server want cert= and key=?",
        ),
        (
            SSL.Error([("SSL routines", "", "wrong version number")]),
            "the TLS handshake failed (wrong version number)",
        ),
        (ConnectionLost(), None),
    ],
)
def test_tls_failures_are_told_in_one_line(reason: Exception, message: str | None) -> None:
    assert tls_failure(Failure(reason)) == message
