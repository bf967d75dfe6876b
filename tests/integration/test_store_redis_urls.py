"""
The Redis store's URLs against real C{redis-server}s (docs/redis.md,
"Connecting"): TLS with a test CA (the store contract over it, mutual TLS,
certificates that do not verify, C{insecure=true}), an ACL user with exactly
the rights docs/redis.md lists (the store contract again) and users lacking
one of them, and a UNIX socket with a database and a password.  The URLs'
parsing: tests/unit/test_store_redis.py.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from refresherd.core.marks import generation_keys
from refresherd.errors import StoreUnavailable
from refresherd.interfaces import IStore
from refresherd.stores.redis import RedisStore
from refresherd.stores.redis_urls import redis_store_from_url
from tests.redis_server import RedisServer, ServerTLS, TLSFiles
from tests.redis_stores import NAMESPACE, READY, sleep
from tests.store_contract import LONG_TTL, StoreContract, sample_entry

SCRIPT_REFUSED = (
    "The user executing the script can't run this command",
    "can't publish to the channel",
)
DOCS = Path(__file__).parents[2] / "docs" / "redis.md"


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TLSFiles]:
    with tempfile.TemporaryDirectory(prefix="rfd-tls-") as directory:
        yield TLSFiles.make(directory)


@pytest.fixture(scope="module")
def other_ca(tls_files: TLSFiles) -> Iterator[TLSFiles]:
    """Certificates of another CA, which did not sign the servers' certificates."""
    with tempfile.TemporaryDirectory(prefix="rfd-tls-") as directory:
        yield TLSFiles.make(directory, "other")


@pytest.fixture(scope="module")
def tls_server(tls_files: TLSFiles) -> Iterator[RedisServer]:
    """A server with TLS (no client certificate asked for) and a UNIX socket, and a password."""
    with RedisServer(password="s3cret pw", tls=ServerTLS(tls_files), unix=True) as server:
        yield server


@pytest.fixture(scope="module")
def mutual_server(tls_files: TLSFiles) -> Iterator[RedisServer]:
    """A server with TLS that demands a client certificate of the test CA."""
    with RedisServer(tls=ServerTLS(tls_files, client_certificates=True)) as server:
        yield server


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A server whose default user has a password, so only the ACL users' AUTH passes."""
    with RedisServer(password="admin pw") as server:
        yield server


class URLTestCase(TestCase):
    """Stores from URLs, started and stopped after the test; errors logged are failures."""

    files: TLSFiles
    other: TLSFiles
    server: RedisServer
    mutual: RedisServer
    acl: RedisServer
    logged_errors: list[dict[str, Any]]

    @pytest.fixture(autouse=True)
    def _fixtures(
        self,
        tls_files: TLSFiles,
        other_ca: TLSFiles,
        tls_server: RedisServer,
        mutual_server: RedisServer,
        acl_server: RedisServer,
        no_logged_errors: list[dict[str, Any]],
    ) -> None:
        self.files, self.other = tls_files, other_ca
        self.server, self.mutual, self.acl = tls_server, mutual_server, acl_server
        self.logged_errors = no_logged_errors

    def start(self, url: str) -> RedisStore:
        store = redis_store_from_url(url, NAMESPACE, reactor, {"RFD_PW": "s3cret pw"})
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def ready(self, url: str) -> RedisStore:
        store = self.start(url)
        await store.ready().addTimeout(READY, reactor)
        return store

    def tls_url(self, query: str = "", server: RedisServer | None = None) -> str:
        server = server or self.server
        auth = ":s3cret%20pw@" if server.password else ""
        return f"rediss://{auth}127.0.0.1:{server.tls_port}/1?{query}"

    def errors(self) -> list[str]:
        """The errors logged so far (then forgotten: they were expected)."""
        texts = [formatEvent(e) for e in self.logged_errors]
        self.logged_errors.clear()
        return texts

    async def representative(self, store: RedisStore) -> None:
        """A put, a get, a lease, a purge and a delete, checked in Redis itself."""
        key = entry_key_of(self)
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertEqual(await store.get(key), sample_entry())
        token = await store.acquire_lease(key, LONG_TTL)
        self.assertIsNotNone(token)
        self.assertIsNone(await store.acquire_lease(key, LONG_TTL))
        assert token is not None
        self.assertTrue(await store.put(key, sample_entry(failures=0), LONG_TTL, lease=token))
        purge = await store.new_purge_token(f"{NAMESPACE}:gen:hard:job:tweets", LONG_TTL)
        self.assertEqual(
            await store.get_purge_tokens([f"{NAMESPACE}:gen:hard:job:tweets"]),
            {f"{NAMESPACE}:gen:hard:job:tweets": purge},
        )
        self.assertTrue(await store.delete(key))
        self.assertIsNone(await store.get(key))


def entry_key_of(test: TestCase) -> str:
    return f"{NAMESPACE}:job:v1:t={test.id().rsplit('.', 1)[-1][:60]}"


class TLSTests(URLTestCase):
    async def test_tls_with_the_ca_file_works_and_stores_in_the_database(self) -> None:
        store = await self.ready(self.tls_url(f"ca={self.files.ca}"))
        self.assertIsNone(store.warning)
        await self.representative(store)
        key = entry_key_of(self)
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertIsNotNone(self.server.command("GET", key, db=1))

    async def test_mutual_tls_with_a_client_certificate(self) -> None:
        files = self.files
        query = f"ca={files.ca}&cert={files.client_cert}&key={files.client_key}"
        store = await self.ready(self.tls_url(query, self.mutual))
        await self.representative(store)

    async def test_mutual_tls_without_a_client_certificate_is_refused(self) -> None:
        store = self.start(self.tls_url(f"ca={self.files.ca}", self.mutual))
        await self.assertNeverReady(store, "does the server want cert= and key=?")

    async def test_a_certificate_for_another_name_is_refused(self) -> None:
        store = self.start(self.tls_url(f"ca={self.files.ca}&server_name=redis.example"))
        await self.assertNeverReady(
            store, "the server's certificate did not verify: it is not valid for 'redis.example'"
        )

    async def test_a_certificate_no_trusted_ca_signed_is_refused(self) -> None:
        for query in (f"ca={self.other.ca}", ""):  # another CA; the system's CAs
            store = self.start(self.tls_url(query))
            await self.assertNeverReady(
                store, "the server's certificate did not verify: no CA trusted here signed it"
            )
            await store.stopService()

    async def assertNeverReady(self, store: RedisStore, reason: str) -> None:
        """
        Over a second of retries the store does not connect, logs the reason as
        one error line once, and every call (a ping, as /readyz makes) fails with it.
        """
        ready = store.ready()
        await sleep(1.5)
        self.assertFalse(ready.called)
        ready.cancel()
        self.failureResultOf(ready)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertIn(reason, raised.exception.message)
        self.assertIn("is not connected", raised.exception.message)
        errors = self.errors()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn(f"Redis at {store.address} could not be used over TLS: ", errors[0])
        self.assertIn(reason, errors[0])
        self.assertNotIn("\n", errors[0])

    async def test_insecure_connects_to_an_unverifiable_server_and_warns(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = await self.ready(self.tls_url("insecure=true"))
        await self.representative(store)
        warnings = [formatEvent(e) for e in logged if e["log_level"] == LogLevel.warn]
        self.assertIn(
            f"TLS to {store.address} does not verify the server's certificate (insecure=true)",
            "\n".join(warnings),
        )

    async def test_insecure_still_shows_a_client_certificate(self) -> None:
        files = self.files
        query = f"insecure=true&cert={files.client_cert}&key={files.client_key}"
        store = await self.ready(self.tls_url(query, self.mutual))
        await store.ping()

    async def test_tls_to_a_port_without_tls_gives_up_within_the_deadline(self) -> None:
        url = f"rediss://:s3cret%20pw@127.0.0.1:{self.server.port}/0?insecure=true"
        store = self.start(url)
        await sleep(store.timeout + 0.5)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertIn("a new connection got no answer within 2 s", raised.exception.message)
        start = time.monotonic()
        await store.stopService()
        self.assertLess(time.monotonic() - start, store.timeout + 0.5)

    async def test_plain_redis_to_a_tls_port_says_the_server_closed_it(self) -> None:
        store = self.start(f"redis://:s3cret%20pw@127.0.0.1:{self.server.tls_port}/0")
        await sleep(0.5)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertIn(
            "it closed a new connection without answering (if that port wants TLS: rediss://)",
            raised.exception.message,
        )


class TLSContractTests(StoreContract, URLTestCase):
    """The store contract, unchanged, over TLS verified with the CA file."""

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._tls_store())

    async def _tls_store(self) -> IStore:
        return await self.ready(self.tls_url(f"ca={self.files.ca}"))

    def advance(self, seconds: float) -> Deferred[None]:
        return sleep(seconds)


class UNIXSocketTests(URLTestCase):
    async def test_unix_socket_with_database_and_password(self) -> None:
        path = self.server.unix_socket
        store = await self.ready(f"unix://:env:RFD_PW@{path}?db=3")
        self.assertEqual(store.address, path)
        await self.representative(store)
        key = entry_key_of(self)
        await store.put(key, sample_entry(), LONG_TTL)
        self.assertIsNotNone(self.server.command("GET", key, db=3))
        self.assertIsNone(self.server.command("GET", key, db=0))

    async def test_unix_socket_with_a_wrong_password_is_refused_naming_the_path(self) -> None:
        store = self.start(f"unix://:wrong-pw@{self.server.unix_socket}")
        await sleep(0.5)
        with self.assertRaises(StoreUnavailable) as raised:
            await store.ping()
        self.assertIn(f"Redis at {self.server.unix_socket}", raised.exception.message)
        self.assertIn("WRONGPASS", raised.exception.message)
        errors = self.errors()
        self.assertTrue(errors)
        self.assertTrue(all("wrong-pw" not in e for e in errors))


def documented_rights() -> list[str]:
    """The arguments of the C{ACL SETUSER} line of docs/redis.md, as a shell would split them."""
    lines = [
        line for line in DOCS.read_text().splitlines() if "redis-cli ACL SETUSER refresherd" in line
    ]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].removeprefix("$ "))
    assert words[:4] == ["redis-cli", "ACL", "SETUSER", "refresherd"], words
    return words[4:]


def rights_for(user: str, password: str, rights: list[str]) -> list[str]:
    """
    The documented rights for this test's user: its password, and the
    namespace C{rfd} replaced.  The contract writes keys in namespaces
    C{rfdtest-<random>}, so C{~rfd:*} becomes C{~rfdtest-*}; the change and
    purge notice channels are the store's, C{rfdtest:changes} and C{rfdtest:purges}.
    """
    replaced = {
        "~rfd:*": "~rfdtest-*",
        "&rfd:changes": f"&{NAMESPACE}:changes",
        "&rfd:purges": f"&{NAMESPACE}:purges",
    }
    out = [f">{password}" if r.startswith(">") else replaced.get(r, r) for r in rights]
    return ["ACL", "SETUSER", user, *out]


class ACLContractTests(StoreContract, URLTestCase):
    """The store contract, unchanged, as an ACL user with exactly the documented rights."""

    def make_store(self) -> Deferred[IStore]:
        return Deferred.fromCoroutine(self._acl_store())

    async def _acl_store(self) -> IStore:
        self.acl.command(*rights_for("refresherd", "acl pw", documented_rights()))
        return await self.ready(f"redis://refresherd:acl%20pw@127.0.0.1:{self.acl.port}/0")

    def advance(self, seconds: float) -> Deferred[None]:
        return sleep(seconds)


class ACLTests(URLTestCase):
    def test_the_documented_rights_are_these(self) -> None:
        """(What the parametrized test below takes away, one at a time.)"""
        rights = documented_rights()
        self.assertEqual(rights[:4], ["on", ">the-password", "resetkeys", "~rfd:*"])
        self.assertIn("-@all", rights)

    async def test_the_store_uses_the_namespace_keys_only(self) -> None:
        """The real key names (not the contract's) are all under ~{namespace}:*."""
        rights = [r.replace("~rfd:*", f"~{NAMESPACE}:*") for r in documented_rights()]
        self.acl.command(*rights_for("ns-only", "pw", rights))
        store = await self.ready(f"redis://ns-only:pw@127.0.0.1:{self.acl.port}/0")
        await self.representative(store)
        entry = sample_entry()
        key = entry_key_of(self)
        for generation in generation_keys(NAMESPACE, entry.job, entry.tags).all:
            await store.new_purge_token(generation, 0.5)  # short: the put pushes them out
        await store.put(key, entry, LONG_TTL)
        await store._ask_role()
        await store._call("wait", lambda c: c.execute_command("WAIT", 0, 1))

    async def test_a_user_lacking_any_one_documented_right_gets_a_clear_error(self) -> None:
        """
        Every right listed is needed: without any one of them, some call the
        store makes is refused (NOPERM, or a script's command refused), in a
        failed call's message or in the log, in one line that never shows the password.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        rights = [r.replace("~rfd:*", f"~{NAMESPACE}:*") for r in documented_rights()]
        needed = [r for r in rights if r[:1] in ("~", "&", "+")]
        self.assertGreaterEqual(len(needed), 15)
        for number, missing in enumerate(needed):
            user = f"lacks-{number}"
            self.acl.command(*rights_for(user, "acl-secret", [r for r in rights if r != missing]))
            store = self.start(f"redis://{user}:acl-secret@127.0.0.1:{self.acl.port}/0")
            seen = len(logged)
            said = await self.exercise(store)
            said += [
                formatEvent(e)
                for e in list(logged)[seen:]
                if e["log_level"] >= LogLevel.warn  # not the debug line of a refused INFO
            ]
            await store.stopService()
            refused = [s for s in said if "NOPERM" in s or any(r in s for r in SCRIPT_REFUSED)]
            self.assertTrue(refused, f"without {missing}: {said}")
            for text in refused:
                self.assertNotIn("\n", text)
                self.assertNotIn("acl-secret", text)
        self.errors()

    async def exercise(self, store: RedisStore) -> list[str]:
        """Every kind of call the store makes; the messages of those that failed."""
        try:
            await store.ready().addTimeout(0.5, reactor)
        except defer.TimeoutError:
            pass
        entry, key = sample_entry(), entry_key_of(self)
        generations = generation_keys(NAMESPACE, entry.job, entry.tags).all
        calls: list[Callable[[], Deferred[Any]]] = [
            lambda: store.ping(),
            lambda: store.get(key),
            lambda: store.read(key, generations),
            lambda: store.acquire_lease(key, LONG_TTL),
            lambda: store.release_lease(key, "0" * 32),
            *[(lambda g=g: store.new_purge_token(g, 0.5)) for g in generations],
            lambda: store.put(key, entry, LONG_TTL),  # EVAL, then
            lambda: store.put(key, entry, LONG_TTL),  # EVALSHA
            lambda: store.delete(key),
            lambda: store._ask_role(),
            lambda: store._call("wait", lambda c: c.execute_command("WAIT", 0, 1)),
            lambda: store.publish_purge(b"{}"),
        ]
        said = []
        for call in calls:
            try:
                await call()
            except StoreUnavailable as e:
                said.append(e.message)
        return said
