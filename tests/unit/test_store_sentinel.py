"""
Redis Sentinel without a server: which address is taken as the primary given
what the sentinels answered (pure), how their replies are read (untrusted),
and the C{redis+sentinel://} URL: what it configures, and what it refuses in
one line that never shows a password (on real sentinels:
tests/integration/test_store_sentinel.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.internet import reactor

from refresherd.stores.sentinel import (
    DEFAULT_SENTINEL_PORT,
    Answer,
    NoPrimary,
    SentinelEndpoint,
    is_primary,
    parse_address,
    primary_candidates,
    sentinel_store_from_url,
)
from refresherd.stores.tls import TLSOptions
from tests.redis_server import TLSFiles

A = ("10.0.0.1", 6379)
B = ("10.0.0.2", 6379)
C = ("10.0.0.3", 6380)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([Answer("s1", A)], [A]),
        ([Answer("s1", A), Answer("s2", A), Answer("s3", A)], [A]),
        # The address most sentinels name, whatever answered first.
        ([Answer("s1", B), Answer("s2", A), Answer("s3", A)], [A]),
        ([Answer("s1", A), Answer("s2", error="no answer"), Answer("s3", B), Answer("s4", B)], [B]),
        # One that does not know the service, or failed, does not vote.
        ([Answer("s1"), Answer("s2", error="refused"), Answer("s3", C)], [C]),
        # A tie: every tied address, in the order first named (each then checked with ROLE).
        ([Answer("s1", B), Answer("s2", A)], [B, A]),
        (
            [Answer("s1", B), Answer("s2", A), Answer("s3", C), Answer("s4", A), Answer("s5", B)],
            [B, A],
        ),
    ],
)
def test_primary_candidates(answers: list[Answer], expected: list[tuple[str, int]]) -> None:
    assert primary_candidates("svc", answers) == expected


def test_no_candidate_when_no_sentinel_answered() -> None:
    answers = [Answer("h1:26379", error="Connection refused"), Answer("h2:26379", error="timeout")]
    with pytest.raises(NoPrimary, match=r"^no sentinel answered \(h1:26379: Connection refused; "):
        primary_candidates("svc", answers)
    with pytest.raises(NoPrimary, match="no sentinel answered"):
        primary_candidates("svc", [])


def test_no_candidate_when_no_sentinel_knows_the_service() -> None:
    with pytest.raises(NoPrimary, match="^no sentinel knows the service 'svc'$"):
        primary_candidates("svc", [Answer("s1"), Answer("s2", error="refused")])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"127.0.0.1", b"6379"], ("127.0.0.1", 6379)),
        ([b"redis-1.internal", b"1"], ("redis-1.internal", 1)),
        ([b"::1", b"65535"], ("::1", 65535)),
        (None, None),
    ],
)
def test_parse_address(reply: object, expected: tuple[str, int] | None) -> None:
    assert parse_address(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        [b"127.0.0.1"],
        [b"127.0.0.1", b"0"],
        [b"127.0.0.1", b"65536"],
        [b"127.0.0.1", b"99999999999999999999"],
        [b"127.0.0.1", b"-1"],
        [b"host name", b"6379"],
        [b"host\r\n", b"6379"],
        [b"", b"6379"],
        [b"h" * 254, b"6379"],
        [b"127.0.0.1", 6379],
        b"127.0.0.1:6379",
        7,
    ],
)
def test_parse_address_refuses_what_is_not_an_address(reply: object) -> None:
    with pytest.raises(ValueError, match="not an address"):
        parse_address(reply)


def test_is_primary() -> None:
    assert is_primary([b"master", 10, []])
    assert not is_primary([b"slave", b"127.0.0.1", 6379, b"connected", 10])
    assert not is_primary([b"sentinel", []])
    assert not is_primary([])
    assert not is_primary(b"master")


def endpoint_of(url: str, environ: dict[str, str] | None = None) -> SentinelEndpoint:
    store = sentinel_store_from_url(url, "ns", reactor, environ or {})
    assert isinstance(store.endpoint, SentinelEndpoint)
    return store.endpoint


def test_sentinel_store_from_url() -> None:
    url = "redis+sentinel://10.0.0.1:26380,[::1]:5,sentinel.internal/mymaster/3"
    store = sentinel_store_from_url(url, "ns", reactor, {})
    endpoint = store.endpoint
    assert isinstance(endpoint, SentinelEndpoint)
    assert endpoint.service == "mymaster"
    assert list(endpoint.sentinels) == [
        ("10.0.0.1", 26380),
        ("::1", 5),
        ("sentinel.internal", DEFAULT_SENTINEL_PORT),
    ]
    assert (endpoint.auth, endpoint.server_auth) == ((), ())
    assert (store.db, store.password, store.namespace) == (3, None, "ns")
    assert store.address == "the primary of mymaster (Sentinel)"
    assert sentinel_store_from_url("REDIS+SENTINEL://h/s", "ns", reactor, {}).db == 0


def test_sentinel_store_from_url_with_passwords() -> None:
    environ = {"RFD_PW": "data secret", "RFD_SPW": "sentinel secret"}
    url = (
        "redis+sentinel://:env:RFD_PW@h1,h2/svc/0"
        "?sentinel_user=watcher&sentinel_password=env:RFD_SPW"
    )
    store = sentinel_store_from_url(url, "ns", reactor, environ)
    assert store.password == "data secret"
    endpoint = store.endpoint
    assert isinstance(endpoint, SentinelEndpoint)
    assert tuple(endpoint.server_auth) == ("data secret",)
    assert tuple(endpoint.auth) == ("watcher", "sentinel secret")
    assert "secret" not in repr(store) and "secret" not in repr(endpoint)
    acl = sentinel_store_from_url("redis+sentinel://app:pw@h/svc", "ns", reactor, {})
    assert (acl.username, acl.password) == ("app", "pw")
    assert isinstance(acl.endpoint, SentinelEndpoint)
    assert tuple(acl.endpoint.server_auth) == ("app", "pw")
    encoded = endpoint_of("redis+sentinel://:p%40ss%2F1@h/svc?sentinel_password=p%26w%3D")
    assert (tuple(encoded.server_auth), tuple(encoded.auth)) == (("p@ss/1",), ("p&w=",))


SECRET = "s3cr3t"


def test_rediss_sentinel_checks_sentinels_by_their_host_and_servers_by_server_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Over TLS, a sentinel's certificate is checked against its host in the URL,
    and a server's against server_name: never against an address a sentinel
    reported (the endpoints are made for the reported address, the name stays).
    """
    # What each endpoint is wrapped with: the name its TLS checks.
    monkeypatch.setattr(TLSOptions, "wrap", lambda self, endpoint: self.server_name)
    files = TLSFiles.make(str(tmp_path))
    url = f"rediss+sentinel://s1.example,10.0.0.2:5/svc/0?server_name=redis.example&ca={files.ca}"
    store = sentinel_store_from_url(url, "ns", reactor, {})
    endpoint = store.endpoint
    assert isinstance(endpoint, SentinelEndpoint)
    assert endpoint.sentinel_endpoint is not None and endpoint.server_endpoint is not None
    names = {
        "sentinel s1": endpoint.sentinel_endpoint("s1.example", DEFAULT_SENTINEL_PORT),
        "sentinel 10.0.0.2": endpoint.sentinel_endpoint("10.0.0.2", 5),
        "reported server": endpoint.server_endpoint("10.9.9.9", 6379),
    }
    checked = dict(names)
    assert checked == {
        "sentinel s1": "s1.example",
        "sentinel 10.0.0.2": "10.0.0.2",
        "reported server": "redis.example",
    }
    assert store.warning is None
    insecure = sentinel_store_from_url(
        "rediss+sentinel://s1/svc?server_name=r.example&insecure=true", "ns", reactor, {}
    )
    assert insecure.warning is not None and "the primary of svc" in insecure.warning


@pytest.mark.parametrize(
    ("url", "environ", "message"),
    [
        ("redis://h:26379/svc", {}, "must start with redis+sentinel:// or rediss+sentinel://"),
        (f"redis+sentinel://:{SECRET}@/svc", {}, "has no sentinel"),
        ("redis+sentinel://h1,,h2/svc", {}, "each sentinel is host or host:port"),
        ("redis+sentinel://h1:0/svc", {}, "each sentinel is host or host:port"),
        ("redis+sentinel://h1:65536/svc", {}, "port from 1 to 65535"),
        (f"redis+sentinel://:{SECRET}@h1:x{SECRET}/svc", {}, "each sentinel is host or"),
        ("redis+sentinel://h1:1,h1:1/svc", {}, "names the sentinel h1:1 twice"),
        ("redis+sentinel://h1", {}, "needs the service name"),
        ("redis+sentinel://h1/", {}, "needs the service name"),
        ("redis+sentinel://h1/my master", {}, "the service name must be"),
        ("redis+sentinel://h1/svc/x", {}, "path must be /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h1/svc/0/1", {}, "path must be /SERVICE or /SERVICE/DB"),
        (f"redis+sentinel://:se/{SECRET}@h1/svc", {}, "percent-encode any of : / ? # @"),
        (f"redis+sentinel://:se?{SECRET}@h1/svc", {}, "percent-encode any of : / ? # @"),
        (f"redis+sentinel://:se#{SECRET}@h1/svc", {}, "percent-encode any of : / ? # @"),
        ("redis+sentinel://h1/svc#x", {}, "takes no fragment"),
        (f"redis+sentinel://{SECRET}@h1/svc", {}, "gives a user name but no password"),
        ("redis+sentinel://:@h1/svc", {}, "has an empty password"),
        ("redis+sentinel://:env:RFD_PW@h1/svc", {}, "environment variable 'RFD_PW' is not set"),
        ("redis+sentinel://:env:RFD_PW@h1/svc", {"RFD_PW": ""}, "'RFD_PW' is empty"),
        (f"redis+sentinel://:env:{SECRET}-x@h1/svc", {}, '"env:" needs the name'),
        (f"redis+sentinel://h1/svc?password={SECRET}", {}, "takes no option 'password'"),
        ("redis+sentinel://h1/svc?ca=/x.pem", {}, "takes no option 'ca' (TLS needs rediss+s"),
        ("rediss+sentinel://h1/svc?ca=/nonexistent.pem", {}, "needs server_name="),
        (
            "rediss+sentinel://h1/svc?server_name=r.example&ca=/nonexistent.pem",
            {},
            "the ca file '/nonexistent.pem' cannot be read",
        ),
        (f"redis+sentinel://h1/svc?timeout={SECRET}", {}, "it takes sentinel_user, sentinel_"),
        ("redis+sentinel://h1/svc?sentinel_password=", {}, "sentinel_password needs a value"),
        ("redis+sentinel://h1/svc?sentinel_password", {}, "sentinel_password needs a value"),
        (
            f"redis+sentinel://h1/svc?sentinel_password={SECRET}&sentinel_password={SECRET}",
            {},
            "gives sentinel_password twice",
        ),
        ("redis+sentinel://h1/svc?sentinel_user=u", {}, "sentinel_user needs sentinel_password"),
        (
            "redis+sentinel://h1/svc?sentinel_password=env:NOPE",
            {},
            "environment variable 'NOPE' is not set",
        ),
    ],
)
def test_sentinel_store_from_url_refuses(url: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        sentinel_store_from_url(url, "ns", reactor, environ)
    text = str(raised.value)
    assert "\n" not in text
    assert SECRET not in text
    assert raised.value.__cause__ is None
