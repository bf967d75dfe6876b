"""
The admin API (docs/admin.md) in memory: StubTreq against the Klein
resource, a memory store, fake fetchers and task.Clock.  Every route with
every kind of token, the protections of an open admin API, and what
C{GET /v1/jobs} must never show.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import attrs
import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from refresherd.config import AuthConfig, JobConfig, Secret, ServerConfig
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.jobs import Job
from refresherd.core.refresher import Refresher
from refresherd.errors import BadArgs, BadJson, BatchTooLarge
from refresherd.http.admin import (
    READY_TIMEOUT,
    AdminAPI,
    describe_job,
    parse_purge,
    redact_url,
)
from refresherd.http.auth import Authorizer
from refresherd.http.public import PublicAPI
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher, UnreachableStore
from tests.stub_treq import StubTreq

LOOPBACK = "http://127.0.0.1:8081"
TOKENS = AuthConfig(
    read_tokens=(Secret("r-token"),),
    write_tokens=(Secret("w-token"),),
    admin_tokens=(Secret("a-token"),),
    metrics_tokens=(Secret("m-token"),),
)
JSON_BODY = {"Content-Type": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class AdminTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.build()

    def build(self, auth: AuthConfig = TOKENS, base: str = LOOPBACK, store: Any = None) -> None:
        self.base = base
        self.fetcher = FakeFetcher()
        jobs = {
            "user": JobConfig(
                name="user",
                fetch="http",
                url="https://api.example/users/{id}",
                args=("id",),
                tags=("user:{id}",),
                fresh=60.0,
                stale=600.0,
            ),
        }
        self.metrics = metrics_for(jobs, seconds=self.clock.seconds)
        self.store = store if store is not None else MemoryStore(self.clock)
        self.refresher = Refresher(
            self.store,
            {name: Job(config, self.fetcher) for name, config in jobs.items()},
            self.clock,
            "rfd",
            self.metrics,
            random=lambda: 0.999,
        )
        authorizer = Authorizer.from_config(auth)
        self.hot = HotKeysRegistry(capacity=3, half_life=60.0)
        self.admin = AdminAPI(
            self.refresher, authorizer, self.metrics, self.clock, hot_keys=lambda: self.hot
        )
        self.public = PublicAPI(
            self.refresher, authorizer, ServerConfig(), self.metrics, self.clock
        )
        self.stub = StubTreq(self.admin.resource())
        self.public_stub = StubTreq(self.public.resource())

    def request(self, method: str, path: str, stub: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        """The response to a request, and its body (JSON parsed if JSON)."""
        stub = stub or self.stub
        d = stub.request(method, self.base + path, **kwargs)
        stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        kind = response.headers.getRawHeaders("content-type", [""])[0]
        parsed = body and kind.startswith("application/json")  # a HEAD has no body
        return response, json.loads(body) if parsed else body

    def error(self, status: int, method: str, path: str, **kwargs: Any) -> str:
        """The error code of a request that must fail with C{status}, checking the object."""
        response, body = self.request(method, path, **kwargs)
        self.assertEqual(response.code, status, body)
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"code", "message"})
        return str(body["error"]["code"])

    def purge(self, token: str | None = "a-token", **body: Any) -> tuple[Any, Any]:
        headers = dict(JSON_BODY, **(bearer(token) if token else {}))
        return self.request("POST", "/v1/purge", json=body, headers=headers)

    def cached(self, id: str = "1", body: bytes = b'{"n": 1}') -> str:
        """Fetch user C{id} through the public API; its key."""
        d = self.public_stub.request(
            "GET", f"{self.base}/v1/jobs/user?id={id}", headers=bearer("r-token")
        )
        self.public_stub.flush()
        self.fetcher.succeed(body=body)
        self.public_stub.flush()
        response = self.successResultOf(d)
        answer = json.loads(self.successResultOf(response.content()))
        return str(answer["key"])

    def status_of(self, id: str = "1") -> str | None:
        """The status a GET of user C{id} answers, or None while it waits for a fetch."""
        d = self.public_stub.request(
            "GET", f"{self.base}/v1/jobs/user?id={id}", headers=bearer("r-token")
        )
        self.public_stub.flush()
        answered: list[Any] = []
        d.addCallback(answered.append)
        if not answered:
            return None
        return str(json.loads(self.successResultOf(answered[0].content()))["status"])


class AuthTests(AdminTestCase):
    """Each admin route: no token 401, a token of the wrong class 403, the right one 200."""

    ROUTES: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/jobs/user/warm", {"json": {"args": [{"id": "1"}]}}),  # fresh: at once
        ("POST", "/v1/purge", {"json": {"jobs": ["user"]}}),
        ("GET", "/v1/entries/rfd%3Auser%3Av1%3Aid%3D1", {}),
        ("GET", "/v1/jobs", {}),
        ("POST", "/v1/jobs/user/refresh?id=1", {"json": {}}),
        ("GET", "/v1/hot?job=user&n=2", {}),
        ("GET", "/v1/status", {}),
        ("GET", "/v1/jobs/user/key?id=1", {}),
    ]

    def test_every_admin_route_needs_an_admin_token(self) -> None:
        self.cached()
        for method, path, kwargs in self.ROUTES:
            headers = dict(JSON_BODY)
            code = self.error(401, method, path, headers=headers, **kwargs)
            self.assertEqual(code, "unauthorized", path)
            unknown = self.error(401, method, path, headers={**headers, **bearer("x")}, **kwargs)
            self.assertEqual(unknown, "unauthorized")
            for token in ("r-token", "m-token", "w-token"):
                code = self.error(403, method, path, headers={**headers, **bearer(token)}, **kwargs)
                self.assertEqual(code, "forbidden", (path, token))
            response, _ = self.request(
                method, path, headers={**headers, **bearer("a-token")}, **kwargs
            )
            self.assertIn(response.code, (200, 202), path)

    def test_a_write_token_may_purge_keys_and_tags_but_not_jobs(self) -> None:
        key = self.cached()
        response, body = self.purge("w-token", keys=[key], tags=["user:2"])
        self.assertEqual((response.code, body), (200, {"purged": 2}))
        response, body = self.purge("w-token", jobs=["user"], tags=["x"])
        self.assertEqual((response.code, body["error"]["code"]), (403, "forbidden"))

    def test_unauthorized_answers_carry_www_authenticate(self) -> None:
        response, _ = self.request("GET", "/v1/jobs")
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ["Bearer"])

    def test_metrics_take_a_metrics_or_admin_token_when_metrics_tokens_exist(self) -> None:
        self.assertEqual(self.error(401, "GET", "/metrics"), "unauthorized")
        self.assertEqual(self.error(403, "GET", "/metrics", headers=bearer("r-token")), "forbidden")
        for token in ("m-token", "a-token"):
            response, body = self.request("GET", "/metrics", headers=bearer(token))
            self.assertEqual(response.code, 200)
            self.assertIn(b"refresherd_requests_total", body)


class OpenAdminTests(AdminTestCase):
    """No admin token: routes are open, but need a loopback Host, and POSTs JSON."""

    def setUp(self) -> None:
        super().setUp()
        self.build(auth=AuthConfig(write_tokens=(Secret("w-token"),)))

    def test_open_admin_routes_need_no_token_but_refuse_an_unknown_one(self) -> None:
        key = self.cached()
        response, body = self.purge(None, keys=[key])
        self.assertEqual((response.code, body), (200, {"purged": 1}))
        self.assertEqual(self.request("GET", "/v1/jobs")[0].code, 200)
        self.assertEqual(self.request("GET", "/v1/jobs", headers=bearer("w-token"))[0].code, 200)
        code = self.error(401, "GET", "/v1/jobs", headers=bearer("nobody"))
        self.assertEqual(code, "unauthorized")

    def test_posts_with_a_host_that_is_not_loopback_are_forbidden(self) -> None:
        for host in ("evil.example", "evil.example:8081", "127.0.0.1.evil.example", "0.0.0.0"):
            code = self.error(
                403, "POST", "/v1/purge", json={"tags": ["t"]}, headers={**JSON_BODY, "Host": host}
            )
            self.assertEqual(code, "forbidden", host)
        for host in ("localhost", "localhost:8081", "127.0.0.1:8081", "127.9.9.9", "[::1]:8081"):
            response, _ = self.request(
                "POST", "/v1/purge", json={"tags": ["t"]}, headers={**JSON_BODY, "Host": host}
            )
            self.assertEqual(response.code, 200, host)
        self.assertEqual(
            self.metrics.registry.get_sample_value("refresherd_purged_total", {"kind": "tag"}), 5
        )

    def test_gets_with_a_host_that_is_not_loopback_are_forbidden(self) -> None:
        """A page on another name that resolves to 127.0.0.1 (DNS rebinding) cannot read."""
        key = self.cached()
        for path in (
            f"/v1/entries/{key}?value=1",
            "/v1/jobs",
            "/v1/hot",
            "/v1/status",
            "/v1/jobs/user/key?id=1",
        ):
            for host in ("evil.example", "evil.example:8081", "127.0.0.1.evil.example"):
                code = self.error(403, "GET", path, headers={"Host": host})
                self.assertEqual(code, "forbidden", (path, host))
            for host in ("localhost:8081", "127.0.0.1", "[::1]:8081"):
                response, _ = self.request("GET", path, headers={"Host": host})
                self.assertEqual(response.code, 200, (path, host))

    def test_a_cross_site_form_post_is_refused(self) -> None:
        """A browser form can send text/plain or form data, never application/json."""
        multipart = b'--b\r\nContent-Disposition: form-data; name="tags"\r\n\r\nt\r\n--b--\r\n'
        for kind, data in [
            ("text/plain", b'{"tags": ["t"]}'),
            ("application/x-www-form-urlencoded", b"tags=t"),
            ("multipart/form-data; boundary=b", multipart),
        ]:
            code = self.error(415, "POST", "/v1/purge", data=data, headers={"Content-Type": kind})
            self.assertEqual(code, "unsupported_media_type")
        code = self.error(415, "POST", "/v1/jobs/user/refresh?id=1", data=b"")
        self.assertEqual(code, "unsupported_media_type")
        data = b'{"args": [{"id": "1"}]}'
        code = self.error(415, "POST", "/v1/jobs/user/warm", data=data)
        self.assertEqual(code, "unsupported_media_type")
        self.assertEqual(self.fetcher.calls, [])


class PurgeTests(AdminTestCase):
    def test_purge_of_a_key_then_the_next_request_is_a_miss(self) -> None:
        key = self.cached()
        self.assertEqual(self.status_of(), "hit")
        response, body = self.purge(keys=[key])
        self.assertEqual((response.code, body), (200, {"purged": 1}))
        self.assertIsNone(self.status_of())
        self.assertEqual(len(self.fetcher.calls), 2)

    def test_soft_purge_of_a_tag_answers_stale_and_refreshes_once(self) -> None:
        self.cached("1")
        self.cached("2")
        response, body = self.purge(tags=["user:1"], soft=True)
        self.assertEqual(body, {"purged": 1})
        self.assertEqual([self.status_of("1") for _ in range(3)], ["stale"] * 3)
        self.assertEqual(self.status_of("2"), "hit")
        self.assertEqual(len(self.fetcher.calls), 3)

    def test_purge_of_a_job(self) -> None:
        self.cached("1")
        self.cached("2")
        self.assertEqual(self.purge(jobs=["user"])[1], {"purged": 1})
        self.assertIsNone(self.status_of("1"))
        self.assertIsNone(self.status_of("2"))

    def test_bad_purges_are_4xx_and_purge_nothing(self) -> None:
        key = self.cached()
        headers = {**JSON_BODY, **bearer("a-token")}
        for data, status, code in [
            (b"{", 400, "bad_json"),
            (b"[]", 400, "bad_json"),
            (b'{"key": ["x"]}', 400, "bad_json"),
            (b'{"keys": "x"}', 400, "bad_json"),
            (b'{"keys": [1]}', 400, "bad_json"),
            (b'{"tags": [""]}', 400, "bad_json"),
            (b'{"tags": ["t"], "soft": "yes"}', 400, "bad_json"),
            (b"{}", 400, "bad_args"),
            (json.dumps({"keys": [key, "rfd:user:v1:id=1 x"]}).encode(), 400, "bad_args"),
            (json.dumps({"keys": [key, "other:user:v1:id=1"]}).encode(), 400, "bad_args"),
            (json.dumps({"keys": [key], "jobs": ["nope"]}).encode(), 404, "unknown_job"),
            (b'{"tags": ["' + b"t" * 1025 + b'"]}', 400, "bad_args"),
        ]:
            got = self.error(status, "POST", "/v1/purge", data=data, headers=headers)
            self.assertEqual(got, code, data)
        self.assertEqual(self.status_of(), "hit")

    def test_purge_with_the_store_unreachable_is_503(self) -> None:
        self.build(store=UnreachableStore(MemoryStore(self.clock)))
        code = self.error(
            503,
            "POST",
            "/v1/purge",
            json={"tags": ["t"]},
            headers={**JSON_BODY, **bearer("a-token")},
        )
        self.assertEqual(code, "store_unavailable")

    def test_wrong_method_and_unknown_route(self) -> None:
        admin = bearer("a-token")
        self.assertEqual(self.error(405, "GET", "/v1/purge", headers=admin), "method_not_allowed")
        self.assertEqual(self.error(404, "GET", "/v1/nothing", headers=admin), "not_found")


class EntryTests(AdminTestCase):
    def test_an_entry_shows_its_metadata_and_on_request_its_value(self) -> None:
        key = self.cached(body=b'{"n": 1}')
        response, body = self.request(
            "GET", "/v1/entries/" + quote(key, safe=""), headers=bearer("a-token")
        )
        self.assertEqual(response.code, 200)
        now = self.clock.seconds()
        spec = {
            "key": key,
            "job": "user",
            "args": {"id": "1"},
            "fetched_at": now,
            "fresh_until": now + 60,
            "stale_until": now + 660,
            "size": 8,
            "content_type": "application/json",
            "tags": ["user:1"],
            "last_error": None,
            "failures": 0,
        }
        self.assertEqual({k: body[k] for k in spec}, spec)
        self.assertEqual(body["purged"], None)
        self.assertNotIn("value", body)
        _, with_value = self.request(
            "GET", "/v1/entries/" + quote(key, safe="") + "?value=1", headers=bearer("a-token")
        )
        self.assertEqual(with_value["value"], {"n": 1})

    def test_a_key_is_percent_decoded_once(self) -> None:
        d = self.public_stub.request(
            "GET", self.base + "/v1/jobs/user?id=caf%C3%A9%20x", headers=bearer("r-token")
        )
        self.public_stub.flush()
        self.fetcher.succeed()
        self.public_stub.flush()
        key = "rfd:user:v1:id=caf%C3%A9%20x"
        self.assertEqual(
            json.loads(self.successResultOf(self.successResultOf(d).content()))["key"], key
        )
        path = "/v1/entries/" + quote(key, safe="")
        self.assertIn("%25C3", path)
        response, body = self.request("GET", path, headers=bearer("a-token"))
        self.assertEqual((response.code, body["args"]), (200, {"id": "caf\u00e9 x"}))

    def test_a_purged_entry_says_so(self) -> None:
        key = self.cached()
        self.purge(tags=["user:1"], soft=True)
        _, body = self.request(
            "GET", "/v1/entries/" + quote(key, safe=""), headers=bearer("a-token")
        )
        self.assertEqual(body["purged"], "soft")

    def test_a_missing_or_bad_key(self) -> None:
        admin = bearer("a-token")
        self.assertEqual(
            self.error(404, "GET", "/v1/entries/rfd%3Auser%3Av1%3Aid%3D9", headers=admin),
            "not_found",
        )
        for path in (
            "/v1/entries/rfd%3Alease%3Auser%3Av1%3Aid%3D1",
            "/v1/entries/a%20b",
            "/v1/entries/rfd%3Auser%3Av1%3Aid%3D1?value=2",
        ):
            self.assertEqual(self.error(400, "GET", path, headers=admin), "bad_args", path)


class RefreshTests(AdminTestCase):
    def test_a_refresh_starts_one_fetch_and_answers_202(self) -> None:
        key = self.cached()
        headers = {**JSON_BODY, **bearer("a-token")}
        for _ in range(3):
            response, body = self.request(
                "POST", "/v1/jobs/user/refresh?id=1", json={}, headers=headers
            )
            self.assertEqual(
                (response.code, body), (202, {"job": "user", "key": key, "status": "pending"})
            )
        self.assertEqual(len(self.fetcher.calls), 2)

    def test_hot_keys_of_every_job_highest_rate_first(self) -> None:
        now = self.clock.seconds()
        for id, times in (("1", 3), ("2", 5), ("3", 1), ("4", 2)):
            for _ in range(times):
                self.hot.observe("user", f"rfd:user:v1:id={id}", {"id": id}, now)
        self.clock.advance(60)  # one half-life: every rate halves
        headers = bearer("a-token")
        response, body = self.request("GET", "/v1/hot", headers=headers)
        self.assertEqual(response.code, 200)
        shown = [
            (hot["key"], hot["args"], hot["rate"], hot["error"]) for hot in body["jobs"]["user"]
        ]
        per_request = math.log(2) / 60 / 2
        # K = 3: "3" (one request) was replaced by "4", which took over its count.
        self.assertEqual(
            shown,
            [
                ("rfd:user:v1:id=2", {"id": "2"}, pytest.approx(5 * per_request), 0.0),
                (
                    "rfd:user:v1:id=4",
                    {"id": "4"},
                    pytest.approx(3 * per_request),
                    pytest.approx(per_request),
                ),
                ("rfd:user:v1:id=1", {"id": "1"}, pytest.approx(3 * per_request), 0.0),
            ],
        )
        _, body = self.request("GET", "/v1/hot?job=user&n=1", headers=headers)
        self.assertEqual([hot["key"] for hot in body["jobs"]["user"]], ["rfd:user:v1:id=2"])

    def test_hot_keys_of_a_job_never_requested_are_an_empty_list(self) -> None:
        response, body = self.request("GET", "/v1/hot?job=user", headers=bearer("a-token"))
        self.assertEqual((response.code, body), (200, {"jobs": {"user": []}}))

    def test_bad_hot_key_queries(self) -> None:
        headers = bearer("a-token")
        self.assertEqual(self.error(404, "GET", "/v1/hot?job=nope", headers=headers), "unknown_job")
        for query in ("n=0", "n=-1", "n=x", "n=10001", "n=" + "9" * 40, "jobs=user", "n=1&n=2"):
            self.assertEqual(
                self.error(400, "GET", f"/v1/hot?{query}", headers=headers), "bad_args"
            )

    def test_bad_refreshes(self) -> None:
        headers = {**JSON_BODY, **bearer("a-token")}
        self.assertEqual(
            self.error(404, "POST", "/v1/jobs/nope/refresh", json={}, headers=headers),
            "unknown_job",
        )
        self.assertEqual(
            self.error(400, "POST", "/v1/jobs/user/refresh", json={}, headers=headers), "bad_args"
        )
        self.assertEqual(self.fetcher.calls, [])


class SilentStore(MemoryStore):
    """A memory store whose pings never answer."""

    def ping(self) -> Deferred[None]:
        return Deferred()


class StatusTests(AdminTestCase):
    """GET /v1/status: the service's figures over the last minute, on the fake clock."""

    def status(self) -> Any:
        response, body = self.request("GET", "/v1/status", headers=bearer("a-token"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        return body

    def test_answers_fetches_and_errors_of_the_last_minute(self) -> None:
        started = self.clock.seconds()
        self.cached("1")  # a miss, one fetch
        self.clock.advance(0.05)
        self.assertEqual(self.status_of("1"), "hit")
        self.assertIsNone(self.status_of("2"))  # a miss waiting on its fetch
        self.clock.advance(0.02)
        shown = self.status()
        self.assertEqual((shown["version"], shown["started"]), ("0.1.0", started))
        self.assertEqual(shown["now"], self.clock.seconds())
        self.assertEqual(shown["uptime_seconds"], 0.07)
        self.assertEqual(shown["window_seconds"], 1.0)  # less than a second up
        self.assertEqual(
            shown["store"],
            {"kind": "memory", "ready": True, "bytes": self.store.used_bytes, "entries": 1},
        )
        (user,) = shown["jobs"]
        self.assertEqual(user["name"], "user")
        self.assertEqual((user["requests"], user["fetches"]), (2, 1))
        self.assertEqual(user["answers"], {"hit": 0.5, "stale": 0.0, "miss": 0.5, "error": 0.0})
        self.assertEqual((user["in_flight"], user["queued"]), (1, 0))  # id=2's fetch
        self.assertEqual(user["fetch_p50_seconds"], 0.0005)  # the fake fetch took no time
        self.clock.advance(1)
        self.fetcher.fail(reason="origin answered 503")  # id=2's fetch, in the next second
        self.public_stub.flush()
        self.clock.advance(59.5)  # the first second (id=1's miss, fetch and hit) has left
        shown = self.status()
        (user,) = shown["jobs"]
        self.assertEqual(shown["window_seconds"], 60.0)
        self.assertEqual((user["requests"], user["fetches"], user["failed_fetches"]), (1, 1, 1))
        self.assertEqual(user["answers"]["error"], 1.0)  # id=2's caller got the error
        self.assertEqual((user["error_ratio"], user["errors_per_second"]), (1.0, 0.016667))
        error = {"time": started + 1.07, "message": "origin answered 503"}
        self.assertEqual(user["last_errors"], [error])
        self.assertEqual(shown["totals"]["in_flight"], 0)
        self.clock.advance(60)
        (user,) = self.status()["jobs"]
        self.assertEqual(
            (user["requests"], user["fetches"], user["fetch_p99_seconds"]), (0, 0, None)
        )
        self.assertEqual(user["last_errors"], [error])  # kept however old

    def test_head_answers_as_get_without_a_body(self) -> None:
        response, body = self.request("HEAD", "/v1/status", headers=bearer("a-token"))
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        for token, code in ((None, 401), ("r-token", 403), ("m-token", 403)):
            headers = bearer(token) if token else {}
            response, body = self.request("HEAD", "/v1/status", headers=headers)
            self.assertEqual((response.code, body), (code, b""))

    def test_a_store_that_does_not_answer_is_not_ready(self) -> None:
        self.build(store=UnreachableStore(MemoryStore(self.clock)))
        shown = self.status()
        self.assertEqual(
            shown["store"], {"kind": "memory", "ready": False, "bytes": None, "entries": None}
        )

    def test_a_store_that_answers_too_late_is_not_ready(self) -> None:
        self.build(store=SilentStore(self.clock))
        d = self.stub.request("GET", self.base + "/v1/status", headers=bearer("a-token"))
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(READY_TIMEOUT)
        self.stub.flush()
        body = json.loads(self.successResultOf(self.successResultOf(d).content()))
        self.assertFalse(body["store"]["ready"])

    def test_any_parameter_is_refused(self) -> None:
        code = self.error(400, "GET", "/v1/status?job=user", headers=bearer("a-token"))
        self.assertEqual(code, "bad_args")


class WarmTests(AdminTestCase):
    HEADERS = {**JSON_BODY, **bearer("a-token")}

    def warm(self, *sets: Any, succeed: bool = True) -> tuple[Any, Any]:
        """POST /v1/jobs/user/warm with C{sets}, its fetches answered (else failed) in turn."""
        d = self.stub.request(
            "POST",
            f"{self.base}/v1/jobs/user/warm",
            json={"args": list(sets)},
            headers=self.HEADERS,
        )
        self.stub.flush()
        while self.fetcher.pending:
            index = self.fetcher.calls.index(self.fetcher.pending[0])
            if succeed:
                self.fetcher.succeed(index=index)
            else:
                self.fetcher.fail(index=index, reason="origin answered 503")
            self.stub.flush()
        response = self.successResultOf(d)
        return response, json.loads(self.successResultOf(response.content()))

    def test_each_set_is_fetched_unless_fresh_and_one_bad_set_fails_alone(self) -> None:
        fresh = self.cached("1")
        response, body = self.warm({"id": "1"}, {"id": "2"}, {"nope": "x"}, "3", {"id": 3})
        self.assertEqual(response.code, 200)
        self.assertEqual(body["job"], "user")
        self.assertEqual(
            body["results"],
            [
                {"key": fresh, "result": "fresh"},
                {"key": "rfd:user:v1:id=2", "result": "done"},
                {
                    "key": None,
                    "result": "failed",
                    "code": "bad_args",
                    "error": "job 'user' takes no argument 'nope'",
                },
                {
                    "key": None,
                    "result": "failed",
                    "code": "bad_args",
                    "error": "an argument set must be an object of argument names to values",
                },
                {
                    "key": None,
                    "result": "failed",
                    "code": "bad_args",
                    "error": "argument 'id' must be a string",
                },
            ],
        )
        self.assertEqual([c.args for c in self.fetcher.calls], [{"id": "1"}, {"id": "2"}])
        self.assertEqual(self.status_of("2"), "hit")  # stored: no request ever missed it

    def test_a_failed_fetch_says_why_and_a_failing_value_is_not_retried_before_its_backoff(
        self,
    ) -> None:
        _, body = self.warm({"id": "1"}, succeed=False)
        failed = {
            "key": "rfd:user:v1:id=1",
            "result": "failed",
            "code": "fetch_failed",
            "error": "origin answered 503",
        }
        self.assertEqual(body["results"], [failed])
        self.cached("2")
        self.clock.advance(61)  # stale: refreshed, and that fails
        _, body = self.warm({"id": "2"}, succeed=False)
        self.assertEqual(body["results"][0]["result"], "failed")
        _, body = self.warm({"id": "2"})  # before its retry_at: nothing fetched
        self.assertEqual(body["results"][0], {**failed, "key": "rfd:user:v1:id=2"})
        self.assertEqual(len(self.fetcher.calls), 3)

    def test_sets_run_at_once_within_the_background_slots(self) -> None:
        d = self.stub.request(
            "POST",
            f"{self.base}/v1/jobs/user/warm",
            json={"args": [{"id": str(i)} for i in range(10)]},
            headers=self.HEADERS,
        )
        self.stub.flush()
        self.assertEqual(len(self.fetcher.pending), 7)  # concurrency 8 - 1
        self.assertNoResult(d)

    def test_bad_warms(self) -> None:
        def error(status: int, path: str, body: Any) -> str:
            return self.error(status, "POST", path, json=body, headers=self.HEADERS)

        self.assertEqual(error(404, "/v1/jobs/nope/warm", {"args": [{}]}), "unknown_job")
        self.assertEqual(error(400, "/v1/jobs/user/warm", {"args": []}), "bad_args")
        self.assertEqual(error(400, "/v1/jobs/user/warm", [{"id": "1"}]), "bad_json")
        self.assertEqual(error(400, "/v1/jobs/user/warm", {"arg": [{"id": "1"}]}), "bad_json")
        self.assertEqual(error(400, "/v1/jobs/user/warm", {"args": [], "x": 1}), "bad_json")
        many = {"args": [{"id": str(i)} for i in range(101)]}
        self.assertEqual(error(413, "/v1/jobs/user/warm", many), "batch_too_large")
        self.assertEqual(self.fetcher.calls, [])

    def test_with_the_store_unreachable_each_set_fails(self) -> None:
        self.build(store=UnreachableStore(MemoryStore(self.clock)))
        _, body = self.warm({"id": "1"})
        self.assertEqual(body["results"][0]["code"], "store_unavailable")
        self.assertEqual(self.fetcher.calls, [])


SECRET_JOB = JobConfig(
    name="secret",
    fetch="http",
    url="https://bot:hunter2@api.example/v1/{id}?api_key=KEY123&id={id}&format=json",
    method="POST",
    args=("id",),
    headers={
        "Accept": Secret("application/json"),
        "user-agent": Secret("refresherd-test"),
        "X-Api-Pass": Secret("LITERAL-PASS"),
        "X-Tenant": Secret("LITERAL-TENANT"),
        "X-Api-Key": Secret("LITERAL-KEY"),
        "X-From-Env": Secret("ENV-VALUE", "env"),
        "X-From-File": Secret("FILE-VALUE", "file"),
        "Authorization": Secret("Bearer LITERAL-AUTH"),
    },
    body={"id": "{id}", "password": "BODY-PASSWORD", "n": 3},
    sign=Secret("SIGNING-SECRET", "env"),
    fresh=60.0,
)
SECRETS = [
    "hunter2",
    "KEY123",
    "LITERAL-KEY",
    "LITERAL-PASS",
    "LITERAL-TENANT",
    "ENV-VALUE",
    "FILE-VALUE",
    "LITERAL-AUTH",
    "BODY-PASSWORD",
    "SIGNING-SECRET",
]


def test_jobs_are_described_with_every_secret_redacted() -> None:
    shown = describe_job(SECRET_JOB)
    text = json.dumps(shown)
    for secret in SECRETS:
        assert secret not in text
    assert shown["url"] == (
        "https://<redacted>@api.example/v1/{id}?api_key=<redacted>&id={id}&format=<redacted>"
    )
    assert shown["headers"] == {
        "Accept": "application/json",
        "user-agent": "refresherd-test",
        "X-Api-Pass": "<redacted>",
        "X-Tenant": "<redacted>",
        "X-Api-Key": "<redacted>",
        "X-From-Env": "<redacted>",
        "X-From-File": "<redacted>",
        "Authorization": "<redacted>",
    }
    assert shown["body"] == {"id": "{id}", "password": "<redacted>", "n": 3}
    assert shown["sign"] == "<redacted>"
    assert (shown["fresh"], shown["args"], shown["method"]) == (60.0, ["id"], "POST")
    assert shown["writable"] is False
    assert shown["warm"] == 0
    warm = describe_job(attrs.evolve(SECRET_JOB, warm=({"id": "1"}, {"id": "2"})))
    assert warm["warm"] == 2


@pytest.mark.parametrize(
    "name", ["Accept", "Accept-Encoding", "Accept-Language", "Content-Type", "USER-AGENT"]
)
def test_only_harmless_headers_show_their_literal_values(name: str) -> None:
    shown = describe_job(
        attrs.evolve(SECRET_JOB, headers={name: Secret("v"), "X-Other": Secret("v")})
    )
    assert shown["headers"] == {name: "v", "X-Other": "<redacted>"}
    hidden = attrs.evolve(SECRET_JOB, headers={name: Secret("v", "env")})
    assert describe_job(hidden)["headers"] == {name: "<redacted>"}


def test_a_url_given_as_env_or_file_shows_no_path_segment_but_placeholders() -> None:
    job = attrs.evolve(
        SECRET_JOB,
        url="https://hooks.example/services/T0/S3CRET/{id}/x{id}?k=QV&id={id}#FRAG",
        url_secret=True,
    )
    shown = describe_job(job)
    assert shown["url"] == (
        "https://hooks.example/<redacted>/<redacted>/<redacted>/{id}/<redacted>"
        "?k=<redacted>&id={id}#<redacted>"
    )
    for secret in ("services", "T0", "S3CRET", "QV", "FRAG"):
        assert secret not in json.dumps(shown)
    literal = describe_job(attrs.evolve(job, url_secret=False))["url"]
    assert (
        literal == "https://hooks.example/services/T0/S3CRET/{id}/x{id}?k=<redacted>&id={id}#FRAG"
    )


def test_a_python_job_shows_its_callable() -> None:
    shown = describe_job(
        JobConfig(name="p", fetch="python", callable="m:f", fresh=1.0, writable=True)
    )
    assert (shown["callable"], shown["fetch"], shown["writable"]) == ("m:f", "python", True)
    assert "url" not in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h/p", "https://h/p"),
        ("https://h/p?q={q}", "https://h/p?q={q}"),
        ("https://u@h/p?flag", "https://<redacted>@h/p?flag"),
        ("http://h:8080/{a}?k=v&x={x}{y}", "http://h:8080/{a}?k=<redacted>&x={x}{y}"),
        ("https://h/p?k=", "https://h/p?k="),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h", "https://h"),
        ("https://h/", "https://h/"),
        ("https://h/a/", "https://h/<redacted>/"),
        ("https://h//{a}", "https://h//{a}"),
        ("https://u:p@h:1/bot123:AA/{a}", "https://<redacted>@h:1/<redacted>/{a}"),
        ("https://h/%7Ba%7D?b=%7Bb%7D", "https://h/<redacted>?b=<redacted>"),
    ],
)
def test_redact_url_of_a_secret_url(url: str, shown: str) -> None:
    assert redact_url(url, secret=True) == shown


def test_parse_purge_takes_the_four_fields_and_drops_repeats() -> None:
    wanted = parse_purge(b'{"keys": ["a", "a"], "jobs": ["j"], "tags": ["t"], "soft": true}')
    assert (wanted.keys, wanted.jobs, wanted.tags, wanted.soft) == (("a",), ("j",), ("t",), True)
    with pytest.raises(BadArgs):
        parse_purge(b'{"keys": [], "soft": true}')
    with pytest.raises(BadJson):
        parse_purge(b"\xff")


def test_a_purge_names_at_most_a_thousand_keys_jobs_and_tags() -> None:
    def names(n: int, prefix: str) -> list[str]:
        return [f"{prefix}{i}" for i in range(n)]

    body = {"keys": names(400, "k"), "jobs": names(100, "j"), "tags": names(500, "t") * 2}
    assert len(parse_purge(json.dumps(body).encode()).tags) == 500  # repeats count once
    body["tags"].append("one more")
    with pytest.raises(BatchTooLarge) as raised:
        parse_purge(json.dumps(body).encode())
    assert (raised.value.status, raised.value.code) == (413, "batch_too_large")
    assert "names 1001" in raised.value.message
