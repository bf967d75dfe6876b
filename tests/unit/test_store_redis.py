"""
The Redis store without a server: the names of its lease keys, calls before
it starts, and its URL: what it configures, and what it refuses in one line
that never shows the password (the store on a real Redis:
tests/integration/test_store_redis.py).
"""

from __future__ import annotations

import re

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from refresherd.errors import StoreUnavailable
from refresherd.keys import MAX_KEY_BYTES, entry_key
from refresherd.stores.redis import DEFAULT_PORT, RedisStore, lease_key
from refresherd.stores.redis_urls import redis_store_from_url


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


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("redis://127.0.0.1:6380/2", {}, ("127.0.0.1", 6380, 2, None)),
        ("redis://localhost", {}, ("localhost", DEFAULT_PORT, 0, None)),
        ("redis://localhost/", {}, ("localhost", DEFAULT_PORT, 0, None)),
        ("redis://localhost:6379", {}, ("localhost", 6379, 0, None)),
        ("REDIS://Redis.Example:1/15", {}, ("redis.example", 1, 15, None)),
        ("redis://[::1]:6379/0", {}, ("::1", 6379, 0, None)),
        ("redis://:pw@host:6379/0", {}, ("host", 6379, 0, "pw")),
        ("redis://:pw:2@host:6379/0", {}, ("host", 6379, 0, "pw:2")),
        ("redis://:p%40ss%2Fw%3Ard@host/3", {}, ("host", DEFAULT_PORT, 3, "p@ss/w:rd")),
        ("redis://:env:RFD_PW@host:6379/0", {"RFD_PW": "from env"}, ("host", 6379, 0, "from env")),
    ],
)
def test_redis_store_from_url(
    url: str, environ: dict[str, str], expected: tuple[str, int, int, str | None]
) -> None:
    store = redis_store_from_url(url, "ns", reactor, environ)
    assert (store.host, store.port, store.db, store.password) == expected
    assert store.namespace == "ns"
    assert store.reactor is reactor
    assert "pw" not in repr(store) and "env" not in repr(store)


SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("url", "environ", "message"),
    [
        ("rediss://host:6379/0", {}, "must start with redis://"),
        ("memcached://host:11211", {}, "must start with redis://"),
        (f"http://:{SECRET}@host", {}, "must start with redis://"),
        ("redis://", {}, "has no host"),
        (f"redis://:{SECRET}@:6379/0", {}, "has no host"),
        ("redis://host:port/0", {}, "needs a port from 1 to 65535"),
        ("redis://host:0/0", {}, "needs a port from 1 to 65535"),
        ("redis://host:65536/0", {}, "needs a port from 1 to 65535"),
        (f"redis://:{SECRET}@host:x{SECRET}/0", {}, "needs a port from 1 to 65535"),
        ("redis://host:6379/db0", {}, "path must be a database number"),
        ("redis://host:6379/0/1", {}, "path must be a database number"),
        ("redis://host:6379/-1", {}, "path must be a database number"),
        (f"redis://:se/{SECRET}@host:6379/0", {}, "percent-encode any of : / ? # @"),
        ("redis://host:6379/0?timeout=1", {}, "takes no query or fragment"),
        (f"redis://:se#{SECRET}@host:6379/0", {}, "percent-encode any of : / ? # @"),
        (f"redis://:se?{SECRET}@host:6379/0", {}, "percent-encode any of : / ? # @"),
        (f"redis://:{SECRET}@host:6379/0#x", {}, "takes no query or fragment"),
        (f"redis://{SECRET}@host:6379/0", {}, "takes a password only"),
        (f"redis://user:{SECRET}@host:6379/0", {}, "takes a password only"),
        ("redis://:@host:6379/0", {}, "has an empty password"),
        ("redis://:env:RFD_PW@host:6379/0", {}, "environment variable 'RFD_PW' is not set"),
        ("redis://:env:RFD_PW@host:6379/0", {"RFD_PW": ""}, "'RFD_PW' is empty"),
        ("redis://:env:@host:6379/0", {}, '"env:" needs the name of an environment variable'),
        (f"redis://:env:{SECRET}-x@host/0", {}, '"env:" needs the name'),
    ],
)
def test_redis_store_from_url_refuses(url: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        redis_store_from_url(url, "ns", reactor, environ)
    text = str(raised.value)
    assert "\n" not in text
    assert SECRET not in text
    assert raised.value.__cause__ is None
