"""
The public HTTP API (docs/README.md) in memory: StubTreq against the Klein
resource, a memory store, a fake fetcher and task.Clock.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from refresherd.config import AuthConfig, JobConfig, Secret, ServerConfig
from refresherd.core.jobs import Job
from refresherd.core.patterns import compile_pattern
from refresherd.core.refresher import Refresher
from refresherd.errors import StoreUnavailable
from refresherd.http.auth import Authorizer
from refresherd.http.public import PublicAPI
from refresherd.http.site import LimitedSite
from refresherd.http.wire import WireSite
from refresherd.metrics import metrics_for
from refresherd.stores.memory import MemoryStore
from refresherd.testing import FakeFetcher, UnreachableStore
from tests.stub_treq import StubTreq

BASE = "http://refresherd.test"


class APITestCase(SynchronousTestCase):
    wire = False
    """Whether requests go through the public listener's llhttp channel (L{WireSite})."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.build()

    def build(self, auth: AuthConfig | None = None, store: Any = None, **policy: Any) -> None:
        self.fetcher = FakeFetcher()
        policy.setdefault("fresh", 60.0)
        policy.setdefault("stale", 600.0)
        policy.setdefault("writable", True)
        jobs = {
            "j": JobConfig(
                name="j",
                fetch="http",
                url="http://origin.test/{id}",
                args=("id",),
                **policy,
            ),
            "noargs": JobConfig(name="noargs", fetch="python", callable="x:y", fresh=60.0),
        }
        self.metrics = metrics_for(jobs)
        self.store = store if store is not None else MemoryStore(self.clock)
        self.refresher = Refresher(
            self.store,
            {name: Job(config, self.fetcher) for name, config in jobs.items()},
            self.clock,
            "rfd",
            self.metrics,
            random=lambda: 0.999,
        )
        self.api = PublicAPI(
            self.refresher,
            Authorizer.from_config(auth or AuthConfig()),
            ServerConfig(max_batch=3),
            self.metrics,
            self.clock,
        )
        self.stub = self.stub_for(self.api)

    def stub_for(self, api: PublicAPI) -> StubTreq:
        """A client of C{api}: over twisted.web's channel, or the public listener's."""
        if not self.wire:
            return StubTreq(api.resource())

        def site(reactor: Any) -> WireSite:
            # Its clock is the service's, as in production (one reactor): a
            # hit's answer is as of when its channel read it.
            made = WireSite(api.resource(), api.body_limit, self.clock)
            made.quick = api.quick()
            return made

        return StubTreq(api.resource(), site=site)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        d = self.stub.request(method, BASE + path, **kwargs)
        self.stub.flush()
        return d

    def answer(self, d: Any) -> tuple[Any, Any]:
        """The response of a request that has been answered, and its body (JSON parsed if JSON)."""
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        if response.headers.getRawHeaders("content-type", [""])[0].startswith("application/json"):
            return response, json.loads(body)
        return response, body

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def fetched(self, body: bytes = b'{"n": 1}', ctype: str = "application/json") -> None:
        self.fetcher.succeed(body=body, content_type=ctype)
        self.stub.flush()

    def error_code(self, d: Any, status: int) -> str:
        response, body = self.answer(d)
        self.last_response = response
        self.assertEqual(response.code, status)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"code", "message"})
        return str(body["error"]["code"])


class LookupTests(APITestCase):
    def test_miss_then_hit_with_fields_and_headers(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=7")
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.fetched(b'{"n": 1, "big": 12345678901234567890}')
        response, body = self.answer(d)
        self.assertEqual(response.code, 200)
        now = self.clock.seconds()
        self.assertEqual(
            body,
            {
                "job": "j",
                "key": "rfd:j:v1:id=7",
                "status": "miss",
                "value": {"n": 1, "big": 12345678901234567890},
                "content_type": "application/json",
                "fetched_at": now,
                "fresh_until": now + 60,
                "stale_until": now + 660,
                "age": 0,
            },
        )
        self.assertEqual(self.header(response, "cache-status"), "refresherd; fwd=miss; stored")
        self.assertEqual(self.header(response, "age"), "0")
        etag = self.header(response, "etag")
        assert etag is not None and etag.startswith('W/"')
        self.clock.advance(10.5)
        response, body = self.answer(self.request("GET", "/v1/jobs/j?id=7"))
        self.assertEqual((body["status"], body["age"]), ("hit", 10.5))
        self.assertEqual(self.header(response, "cache-status"), "refresherd; hit; ttl=49")
        self.assertEqual(self.header(response, "age"), "10")
        self.assertEqual(self.header(response, "etag"), etag)
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_stale_has_a_negative_ttl_and_starts_one_refresh(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=1")
        self.fetched()
        self.answer(d)
        self.clock.advance(72.5)
        response, body = self.answer(self.request("GET", "/v1/jobs/j?id=1"))
        self.assertEqual(body["status"], "stale")
        self.assertNotIn("error", body)
        self.assertEqual(self.header(response, "cache-status"), "refresherd; hit; ttl=-13")
        self.assertEqual(len(self.fetcher.calls), 2)

    def test_stale_because_refreshes_fail_says_why_in_one_line(self) -> None:
        self.answer_miss()
        self.clock.advance(61)
        self.answer(self.request("GET", "/v1/jobs/j?id=1"))
        self.fetcher.fail(reason="origin answered 503")
        self.stub.flush()
        _, body = self.answer(self.request("GET", "/v1/jobs/j?id=1"))
        self.assertEqual((body["status"], body["error"]), ("stale", "origin answered 503"))

    def answer_miss(self, path: str = "/v1/jobs/j?id=1", **fetched: Any) -> Any:
        d = self.request("GET", path)
        self.fetched(**fetched)
        return self.answer(d)

    def test_if_none_match_gets_304(self) -> None:
        response, _ = self.answer_miss()
        etag = self.header(response, "etag")
        response, body = self.answer(
            self.request("GET", "/v1/jobs/j?id=1", headers={"If-None-Match": etag})
        )
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(self.header(response, "etag"), etag)
        other, _ = self.answer(
            self.request("GET", "/v1/jobs/j?id=1", headers={"If-None-Match": 'W/"other"'})
        )
        self.assertEqual(other.code, 200)

    def test_304_for_a_stale_value_still_starts_its_refresh(self) -> None:
        response, _ = self.answer_miss()
        self.clock.advance(61)
        headers = {"If-None-Match": self.header(response, "etag")}
        response, _ = self.answer(self.request("GET", "/v1/jobs/j?id=1", headers=headers))
        self.assertEqual(response.code, 304)
        self.assertEqual(len(self.fetcher.calls), 2)

    def test_text_value_and_binary_value_b64(self) -> None:
        _, body = self.answer_miss(body="héllo".encode(), ctype="text/plain; charset=utf-8")
        self.assertEqual(body["value"], "héllo")
        _, body = self.answer_miss("/v1/jobs/j?id=2", body=b"\xff\x00", ctype="image/png")
        self.assertEqual(body["value_b64"], "/wA=")
        self.assertNotIn("value", body)

    def test_raw_serves_the_stored_body_with_its_type_and_safety_headers(self) -> None:
        self.answer_miss(body=b"<b>hi</b>", ctype="text/html")
        response, body = self.answer(self.request("GET", "/v1/jobs/j/raw?id=1"))
        self.assertEqual((response.code, body), (200, b"<b>hi</b>"))
        self.assertEqual(self.header(response, "content-type"), "text/html")
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "content-security-policy"), "sandbox")
        self.assertTrue((self.header(response, "cache-status") or "").startswith("refresherd; hit"))
        json_response, _ = self.answer(self.request("GET", "/v1/jobs/j?id=1"))
        self.assertEqual(self.header(json_response, "etag"), self.header(response, "etag"))

    def test_pending_for_on_miss_empty(self) -> None:
        self.build(on_miss="empty")
        response, body = self.answer(self.request("GET", "/v1/jobs/j?id=1"))
        self.assertEqual(response.code, 202)
        self.assertEqual(body, {"job": "j", "key": "rfd:j:v1:id=1", "status": "pending"})

    def test_plus_is_a_space_and_args_are_percent_decoded(self) -> None:
        self.build(path_slash=True)
        d = self.request("GET", "/v1/jobs/j?id=a+b%2Fc%C3%A9")
        self.assertEqual(self.fetcher.calls[0].args, {"id": "a b/cé"})
        self.fetched()
        _, body = self.answer(d)
        self.assertEqual(body["key"], "rfd:j:v1:id=a%20b%2Fc%C3%A9")

    def test_a_job_without_args(self) -> None:
        d = self.request("GET", "/v1/jobs/noargs")
        self.fetched()
        _, body = self.answer(d)
        self.assertEqual((body["status"], body["key"]), ("miss", "rfd:noargs:v1:"))


class ErrorTests(APITestCase):
    def test_unknown_job(self) -> None:
        self.assertEqual(self.error_code(self.request("GET", "/v1/jobs/nope"), 404), "unknown_job")

    def test_bad_args(self) -> None:
        for query in [
            "",
            "?id=1&x=2",
            "?id=1&id=2",
            "?id=" + "x" * 1025,
            "?id=%FF",
            "?id=.",
            "?id=..",
        ]:
            code = self.error_code(self.request("GET", "/v1/jobs/j" + query), 400)
            self.assertEqual(code, "bad_args", query)
        self.assertEqual(self.fetcher.calls, [])
        errors = self.metrics.registry.get_sample_value(
            "refresherd_requests_total", {"job": "j", "status": "error"}
        )
        self.assertEqual(errors, 7)  # every answer counted, malformed queries too

    def test_value_of_exactly_1_kib_is_accepted(self) -> None:
        self.request("GET", "/v1/jobs/j?id=" + "é" * 512)
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_a_slash_in_a_path_argument_is_bad_args_unless_the_job_allows_it(self) -> None:
        for query in ("id=a%2Fb", "id=..%2F..%2Fadmin", "id=a%5Cb", "id="):
            response = self.request("GET", "/v1/jobs/j?" + query)
            self.assertEqual(self.error_code(response, 400), "bad_args")
        self.assertEqual(self.fetcher.calls, [])
        self.build(path_slash=True)
        self.request("GET", "/v1/jobs/j?id=a%2Fb")
        self.assertEqual([call.args for call in self.fetcher.calls], [{"id": "a/b"}])

    def test_arg_patterns(self) -> None:
        self.build(arg_patterns={"id": compile_pattern("[0-9]+")})
        self.assertEqual(self.error_code(self.request("GET", "/v1/jobs/j?id=1a"), 400), "bad_args")
        self.request("GET", "/v1/jobs/j?id=12")
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_unknown_route_and_wrong_method_are_json(self) -> None:
        self.assertEqual(self.error_code(self.request("GET", "/nope"), 404), "not_found")
        self.assertEqual(self.error_code(self.request("GET", "/v1/jobs"), 404), "not_found")
        d = self.request("DELETE", "/v1/jobs/j")
        self.assertEqual(self.error_code(d, 405), "method_not_allowed")
        self.assertIn("PUT", self.header(self.last_response, "allow"))
        self.assertEqual(
            self.error_code(self.request("GET", "/v1/fetch"), 405), "method_not_allowed"
        )

    def test_fetch_failed_then_remembered(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=1")
        self.fetcher.fail(reason="origin answered 500")
        self.assertEqual(self.error_code(d, 502), "fetch_failed")
        self.assertEqual(
            self.error_code(self.request("GET", "/v1/jobs/j?id=1"), 502), "fetch_failed"
        )
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_wait_timeout(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=1")
        self.clock.advance(5)
        self.assertEqual(self.error_code(d, 504), "wait_timeout")

    def test_readyz_tells_callers_nothing_of_the_store_but_logs_why(self) -> None:
        """The store's own words (host, port, WRONGPASS) go to the log, not to a caller."""
        store = UnreachableStore(MemoryStore(self.clock), down=False)
        reason = "redis 10.1.2.3:6379 refused PING: WRONGPASS invalid username-password pair"
        self.patch(store, "ping", lambda: defer.fail(StoreUnavailable(reason)))
        self.build(store=store)
        logged = EventLoggingObserver()
        globalLogPublisher.addObserver(logged)
        self.addCleanup(globalLogPublisher.removeObserver, logged)
        response, body = self.answer(self.request("GET", "/readyz"))
        self.assertEqual(response.code, 503)
        self.assertEqual(
            body,
            {"error": {"code": "store_unavailable", "message": "the store does not answer"}},
        )
        self.assertIn(reason, [e.get("reason") for e in logged])

    def test_overloaded(self) -> None:
        self.build(concurrency=1, max_queue=0)
        self.request("GET", "/v1/jobs/j?id=1")
        self.assertEqual(self.error_code(self.request("GET", "/v1/jobs/j?id=2"), 503), "overloaded")

    def test_store_unavailable_on_ready_and_pending(self) -> None:
        self.build(store=UnreachableStore(MemoryStore(self.clock)), on_miss="empty")
        self.assertEqual(self.error_code(self.request("GET", "/readyz"), 503), "store_unavailable")
        self.assertEqual(
            self.error_code(self.request("GET", "/v1/jobs/j?id=1"), 503), "store_unavailable"
        )


class BatchTests(APITestCase):
    def test_items_answered_in_order_with_errors_in_place(self) -> None:
        self.answer_one()
        d = self.request(
            "POST",
            "/v1/fetch",
            json={
                "items": [
                    {"job": "j", "args": {"id": "1"}},
                    {"job": "nope", "args": {}},
                    {"job": "j", "args": {"id": 5}},
                ]
            },
        )
        response, body = self.answer(d)
        self.assertEqual(response.code, 200)
        first, unknown, bad = body["items"]
        self.assertEqual((first["status"], first["value"]), ("hit", {"n": 1}))
        self.assertEqual(unknown["error"]["code"], "unknown_job")
        self.assertEqual(bad["error"]["code"], "bad_args")
        counted = self.metrics.registry.get_sample_value(
            "refresherd_requests_total", {"job": "_unknown", "status": "error"}
        )
        self.assertEqual(counted, 1)

    def answer_one(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=1")
        self.fetched()
        self.answer(d)

    def test_misses_in_a_batch_wait_for_their_fetches(self) -> None:
        d = self.request(
            "POST",
            "/v1/fetch",
            json={"items": [{"job": "j", "args": {"id": "1"}}, {"job": "j", "args": {"id": "2"}}]},
        )
        self.assertNoResult(d)
        self.fetcher.succeed(0)
        self.fetcher.succeed(1, body=b"2")
        self.stub.flush()
        _, body = self.answer(d)
        self.assertEqual([item["value"] for item in body["items"]], [{"n": 1}, 2])

    def test_bad_json_and_shapes(self) -> None:
        for data in [b"{", b"[]", b'{"items": {}}', b"\xff"]:
            d = self.request("POST", "/v1/fetch", data=data)
            self.assertEqual(self.error_code(d, 400), "bad_json", data)
        d = self.request("POST", "/v1/fetch", json={"items": [1]})
        _, body = self.answer(d)
        self.assertEqual(body["items"][0]["error"]["code"], "bad_args")

    def test_batch_too_large(self) -> None:
        items = [{"job": "j", "args": {"id": str(i)}} for i in range(4)]
        d = self.request("POST", "/v1/fetch", json={"items": items})
        self.assertEqual(self.error_code(d, 413), "batch_too_large")
        self.assertEqual(self.fetcher.calls, [])


class AuthAndPutTests(APITestCase):
    def tokens(self) -> AuthConfig:
        return AuthConfig(
            read_tokens=(Secret("r-token"),),
            write_tokens=(Secret("w-token"),),
            metrics_tokens=(Secret("m-token"),),
        )

    def test_put_is_refused_when_no_write_or_admin_token_is_configured(self) -> None:
        d = self.request("PUT", "/v1/jobs/j?id=1", data=b"x")
        self.assertEqual(self.error_code(d, 403), "forbidden")

    def test_read_tokens_guard_reads(self) -> None:
        self.build(auth=self.tokens())
        d = self.request("GET", "/v1/jobs/j?id=1")
        self.assertEqual(self.error_code(d, 401), "unauthorized")
        self.assertEqual(self.header(self.last_response, "www-authenticate"), "Bearer")
        bad = self.request("GET", "/v1/jobs/j?id=1", headers={"Authorization": "Bearer nope"})
        self.assertEqual(self.error_code(bad, 401), "unauthorized")
        wrong = self.request("GET", "/v1/jobs/j?id=1", headers={"Authorization": "Bearer m-token"})
        self.assertEqual(self.error_code(wrong, 403), "forbidden")
        for token in ("r-token", "w-token"):
            self.request("GET", "/v1/jobs/j?id=1", headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(len(self.fetcher.calls), 1)
        self.assertEqual(self.answer(self.request("GET", "/healthz"))[0].code, 200)

    def test_put_stores_a_fresh_value_and_answers_like_a_get(self) -> None:
        self.build(auth=self.tokens())
        write = {"Authorization": "Bearer w-token", "Content-Type": "text/plain"}
        response, body = self.answer(
            self.request("PUT", "/v1/jobs/j?id=1", data=b"hello", headers=write)
        )
        self.assertEqual(response.code, 200)
        self.assertEqual((body["status"], body["value"]), ("hit", "hello"))
        self.assertEqual(body["fresh_until"], self.clock.seconds() + 60)
        read = {"Authorization": "Bearer r-token"}
        _, got = self.answer(self.request("GET", "/v1/jobs/j?id=1", headers=read))
        self.assertEqual((got["status"], got["value"]), ("hit", "hello"))
        self.assertEqual(self.fetcher.calls, [])

    def test_put_errors(self) -> None:
        self.build(auth=self.tokens(), max_value_bytes=4)
        read = {"Authorization": "Bearer r-token"}
        self.assertEqual(
            self.error_code(self.request("PUT", "/v1/jobs/j?id=1", data=b"x", headers=read), 403),
            "forbidden",
        )
        write = {"Authorization": "Bearer w-token", "Content-Type": "application/json"}
        for data, status, code in [(b"{x", 400, "bad_json"), (b"12345", 413, "body_too_large")]:
            d = self.request("PUT", "/v1/jobs/j?id=1", data=data, headers=write)
            self.assertEqual(self.error_code(d, status), code)
        d = self.request("PUT", "/v1/jobs/nope", data=b"1", headers=write)
        self.assertEqual(self.error_code(d, 404), "unknown_job")

    def test_a_put_to_a_job_that_is_not_writable_is_forbidden_naming_the_job_and_the_key(
        self,
    ) -> None:
        self.build(auth=self.tokens(), writable=False)
        write = {"Authorization": "Bearer w-token", "Content-Type": "application/json"}
        # Refused before the arguments and the body are looked at: bad ones change nothing.
        for path, data in [("/v1/jobs/j?id=1", b"1"), ("/v1/jobs/j?bogus=1", b"{x")]:
            response, body = self.answer(self.request("PUT", path, data=data, headers=write))
            self.assertEqual((response.code, body["error"]["code"]), (403, "forbidden"))
            self.assertIn("'j'", body["error"]["message"])
            self.assertIn("writable = true", body["error"]["message"])
        self.assertEqual(self.store.used_bytes, 0)
        # The token is checked first: none is 401, a read token is refused as such.
        d = self.request("PUT", "/v1/jobs/j?id=1", data=b"1")
        self.assertEqual(self.error_code(d, 401), "unauthorized")
        read = {"Authorization": "Bearer r-token"}
        response, body = self.answer(
            self.request("PUT", "/v1/jobs/j?id=1", data=b"1", headers=read)
        )
        self.assertEqual(response.code, 403)
        self.assertNotIn("writable", body["error"]["message"])

    def test_a_job_is_not_writable_unless_configured_so(self) -> None:
        self.build(auth=self.tokens())
        write = {"Authorization": "Bearer w-token"}
        d = self.request("PUT", "/v1/jobs/noargs", data=b"1", headers=write)
        self.assertEqual(self.error_code(d, 403), "forbidden")

    def test_put_refuses_a_content_type_a_reader_of_the_store_would_refuse(self) -> None:
        """
        Control characters (header injection) and more: 415, and nothing
        stored; the public listener's parser refuses a control character in
        any header value before a route sees it (400 C{bad_request}).
        """
        self.build(auth=self.tokens())
        for content_type in [b"text/plain\x01", b"text/plain;\tcharset=utf-8", b"text/\x85"]:
            write = {b"Authorization": [b"Bearer w-token"], b"Content-Type": [content_type]}
            d = self.request("PUT", "/v1/jobs/j?id=1", data=b"x", headers=write)
            if self.wire and b"\x01" in content_type:
                self.assertEqual(self.error_code(d, 400), "bad_request", content_type)
                continue
            self.assertEqual(self.error_code(d, 415), "unsupported_media_type", content_type)
        self.request("GET", "/v1/jobs/j?id=1", headers={"Authorization": "Bearer r-token"})
        self.assertEqual(len(self.fetcher.calls), 1)


class HealthTests(APITestCase):
    def test_healthz_and_readyz(self) -> None:
        for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
            response, body = self.answer(self.request("GET", path))
            self.assertEqual((response.code, body), (200, {"status": status}))

    def test_request_durations_are_counted_by_route_template(self) -> None:
        self.answer(self.request("GET", "/healthz"))
        self.answer(self.request("GET", "/v1/jobs/nope"))
        registry = self.metrics.registry
        get = registry.get_sample_value
        self.assertEqual(
            get(
                "refresherd_http_request_duration_seconds_count",
                {"route": "/healthz", "code": "200"},
            ),
            1,
        )
        self.assertEqual(
            get(
                "refresherd_http_request_duration_seconds_count",
                {"route": "/v1/jobs/{job}", "code": "404"},
            ),
            1,
        )


class LayoutTests(APITestCase):
    """C{GET /v1/layout}: what direct reads need, with an ETag (docs/README.md)."""

    def test_the_layout_names_the_store_namespace_and_jobs_with_its_generation_as_etag(
        self,
    ) -> None:
        response, body = self.answer(self.request("GET", "/v1/layout"))
        self.assertEqual(response.code, 200)
        self.assertEqual((body["format"], body["store"], body["namespace"]), (1, "memory", "rfd"))
        self.assertEqual(
            body["jobs"]["j"],
            {
                "version": 1,
                "args": ["id"],
                "tags": [],
                "early_refresh": 1.0,
                "max_value_bytes": 32 * 1024 * 1024,
                "direct": True,
            },
        )
        self.assertEqual(self.header(response, "etag"), f'"{body["generation"]}"')

    def test_a_matching_if_none_match_is_a_304_and_another_the_layout(self) -> None:
        etag = self.header(self.answer(self.request("GET", "/v1/layout"))[0], "etag")
        assert etag is not None
        same, body = self.answer(self.request("GET", "/v1/layout", headers={"If-None-Match": etag}))
        self.assertEqual((same.code, body), (304, b""))
        other, _ = self.answer(
            self.request("GET", "/v1/layout", headers={"If-None-Match": '"other"'})
        )
        self.assertEqual(other.code, 200)

    def test_its_generation_changes_with_a_job_version(self) -> None:
        first = self.answer(self.request("GET", "/v1/layout"))[1]["generation"]
        self.build(version=2)
        second = self.answer(self.request("GET", "/v1/layout"))[1]
        self.assertEqual(second["jobs"]["j"]["version"], 2)
        self.assertNotEqual(second["generation"], first)

    def test_a_reload_that_bumps_a_version_changes_it(self) -> None:
        first = self.answer(self.request("GET", "/v1/layout"))[1]
        jobs = dict(self.refresher.jobs)
        jobs["j"] = Job(attrs.evolve(jobs["j"].config, version=3), self.fetcher)
        self.refresher.set_jobs(jobs)
        second = self.answer(self.request("GET", "/v1/layout"))[1]
        self.assertEqual(second["jobs"]["j"]["version"], 3)
        self.assertNotEqual(second["generation"], first["generation"])

    def test_it_is_a_read_guarded_by_read_tokens(self) -> None:
        self.build(auth=AuthConfig(read_tokens=(Secret("r-token"),)))
        self.assertEqual(self.error_code(self.request("GET", "/v1/layout"), 401), "unauthorized")
        read = {"Authorization": "Bearer r-token"}
        self.assertEqual(self.answer(self.request("GET", "/v1/layout", headers=read))[0].code, 200)


class StrictJSONTests(APITestCase):
    def test_a_put_of_json_with_nan_is_bad_json_since_answers_splice_it(self) -> None:
        self.build(auth=AuthConfig(write_tokens=(Secret("w"),)))
        headers = {"Authorization": "Bearer w", "Content-Type": "application/json"}
        for body in [b'{"x": NaN}', b"Infinity", '"é"'.encode("utf-16")]:
            d = self.request("PUT", "/v1/jobs/j?id=1", data=body, headers=headers)
            self.assertEqual(self.error_code(d, 400), "bad_json", body)


class AccessLogTests(APITestCase):
    def access_events(self, access_log: bool) -> list[Any]:
        server = ServerConfig(max_batch=3, access_log=access_log)
        self.api = PublicAPI(self.refresher, self.api.authorizer, server, self.metrics, self.clock)
        self.stub = self.stub_for(self.api)
        logged = EventLoggingObserver()
        globalLogPublisher.addObserver(logged)
        self.addCleanup(globalLogPublisher.removeObserver, logged)
        headers = {"Authorization": "Bearer secret-token-123"}
        self.answer(self.request("GET", "/healthz", headers=headers))
        self.answer(self.request("GET", "/v1/jobs/nope?id=private-value", headers=headers))
        return [e for e in logged if e.get("log_namespace") == "refresherd.access"]

    def test_one_line_per_request_with_route_status_and_duration(self) -> None:
        events = self.access_events(access_log=True)
        self.assertEqual(
            [(e["method"], e["route"], e["code"]) for e in events],
            [("GET", "/healthz", 200), ("GET", "/v1/jobs/{job}", 404)],
        )
        for event in events:
            self.assertIsInstance(event["duration"], float)
            text = formatEvent(event) + repr(event)
            self.assertNotIn("secret-token-123", text)
            self.assertNotIn("private-value", text)

    def test_no_access_lines_unless_asked(self) -> None:
        self.assertEqual(self.access_events(access_log=False), [])


class HostileRequestTests(APITestCase):
    """Requests found by schemathesis that once got a 500, HTML or the wrong answer."""

    def test_json_nested_too_deeply_is_bad_json(self) -> None:
        self.build(auth=AuthConfig(write_tokens=(Secret("w"),)))
        deep = b"[" * 5000 + b"]" * 5000
        write = {"Authorization": "Bearer w", "Content-Type": "application/json"}
        d = self.request("PUT", "/v1/jobs/j?id=1", data=deep, headers=write)
        self.assertEqual(self.error_code(d, 400), "bad_json")
        d = self.request("POST", "/v1/fetch", data=b'{"items": ' + deep + b"}")
        self.assertEqual(self.error_code(d, 400), "bad_json")

    def test_an_empty_path_segment_matches_no_route(self) -> None:
        for path in ("/v1/jobs//raw", "/v1/jobs/j//raw?id=1", "/v1//fetch"):
            method = "POST" if path.endswith("fetch") else "GET"
            self.assertEqual(self.error_code(self.request(method, path), 404), "not_found", path)
        self.assertEqual(self.fetcher.calls, [])

    def test_a_path_that_is_not_utf8_is_bad_args(self) -> None:
        d = self.request("GET", "/v1/jobs/%FF?id=1")
        self.assertEqual(self.error_code(d, 400), "bad_args")

    def test_a_put_with_if_none_match_answers_200_with_the_value(self) -> None:
        self.build(auth=AuthConfig(write_tokens=(Secret("w"),)))
        headers = {"Authorization": "Bearer w", "Content-Type": "text/plain", "If-None-Match": "*"}
        response, body = self.answer(
            self.request("PUT", "/v1/jobs/j?id=1", data=b"hello", headers=headers)
        )
        self.assertEqual((response.code, body["value"]), (200, "hello"))

    def test_the_put_body_limit_is_the_job_s_whatever_the_encoding_of_its_name(self) -> None:
        self.build(max_value_bytes=5_000_000)
        self.assertEqual(self.api.body_limit(b"PUT", b"/v1/jobs/%6A?id=1"), 5_000_000)
        self.assertEqual(self.api.body_limit(b"PUT", b"/v1/jobs/j?id=1"), 5_000_000)

    def test_a_put_to_a_job_that_is_not_writable_may_send_max_body_bytes_only(self) -> None:
        self.build(max_value_bytes=5_000_000, writable=False)
        self.assertEqual(
            self.api.body_limit(b"PUT", b"/v1/jobs/j?id=1"), self.api.server.max_body_bytes
        )


class FastPathTests(APITestCase):
    """
    GET and HEAD of values: on the public listener's channel answered by
    L{QuickValues} without twisted.web, through twisted.web by Klein's routes;
    what they answer does not change.
    """

    def test_a_miss_answered_later_and_a_hit_answered_at_once(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=9")
        self.assertNoResult(d)
        self.fetched()
        response, body = self.answer(d)
        self.assertEqual(body["status"], "miss")
        if self.wire:  # written in one piece, with its length
            self.assertEqual(response.length, len(self.successResultOf(response.content())))
        self.assertEqual(self.answer(self.request("GET", "/v1/jobs/j?id=9"))[1]["status"], "hit")

    def test_head_answers_the_headers_without_a_body(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=1")
        self.fetched()
        self.answer(d)
        response = self.successResultOf(self.request("HEAD", "/v1/jobs/j/raw?id=1"))
        body = self.successResultOf(response.content())
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")

    def test_a_name_klein_must_decode_still_reaches_its_job(self) -> None:
        d = self.request("GET", "/v1/jobs/%6A?id=1")
        self.fetched()
        response, body = self.answer(d)
        self.assertEqual((response.code, body["job"]), (200, "j"))

    @pytest.fixture(autouse=True)
    def _errors(self, no_logged_errors: list[dict[str, Any]]) -> None:
        self.logged_errors = no_logged_errors

    def assertInternal(self, d: Any) -> None:
        response, body = self.answer(d)
        self.assertEqual(response.code, 500)
        self.assertEqual(body, {"error": {"code": "internal", "message": "internal error"}})
        for name in ("etag", "age", "cache-status"):
            self.assertIsNone(self.header(response, name), name)
        [logged] = self.logged_errors
        self.assertEqual(logged["log_failure"].type, UnicodeEncodeError)
        self.logged_errors.clear()
        self.assertEqual(len(self.flushLoggedErrors(UnicodeEncodeError)), 1)

    def test_an_answer_that_fails_to_render_later_is_a_500_not_left_unanswered(self) -> None:
        """A waiting request always gets an answer, even when rendering it is a bug."""
        d = self.request("GET", "/v1/jobs/j/raw?id=9")
        self.fetched(b"x", ctype="text/\u0100")  # no Content-Type can carry it
        self.assertInternal(d)

    def test_an_answer_that_fails_to_render_at_once_is_a_500(self) -> None:
        d = self.request("GET", "/v1/jobs/j?id=9")
        self.fetched(b"x", ctype="text/\u0100")
        self.answer(d)
        self.assertInternal(self.request("GET", "/v1/jobs/j/raw?id=9"))


class CallerGoneTests(APITestCase):
    """A caller that goes away while its value is fetched costs nothing, on either channel."""

    def gone(self, site: LimitedSite) -> None:
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /v1/jobs/j?id=9 HTTP/1.1\r\nHost: h\r\n\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
        self.fetched()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_on_the_public_listener_s_channel(self) -> None:
        site = WireSite(self.api.resource(), self.api.body_limit, self.clock)
        site.quick = self.api.quick()
        self.gone(site)

    def test_through_twisted_web_and_klein_whose_cancelled_wait_is_no_error(self) -> None:
        self.gone(LimitedSite(self.api.resource(), self.api.body_limit, self.clock))


class BodiesTests(SynchronousTestCase):
    """L{Bodies} answers the same JSON as L{answer_body}, whatever it kept."""

    def entry(self, body: bytes, content_type: str = "application/json", at: float = 100.0) -> Any:
        from refresherd.entry import Fetched, value_entry

        return value_entry(
            Fetched(body, content_type),
            job="j",
            args={"id": "1"},
            tags=(),
            now=at,
            duration=0.1,
            fresh=60.0,
            stale=600.0,
            stale_if_error=0.0,
        )

    def test_every_answer_renders_as_answer_body_does(self) -> None:
        from refresherd.core.refresher import Answer
        from refresherd.http.answers import Bodies, answer_body

        bodies = Bodies()
        json_value, other = self.entry(b'{"n": 1}'), self.entry(b"\xff\x00", "image/png")
        answers = [
            Answer("j", "rfd:j:v1:id=1", "hit", json_value),
            Answer("j", "rfd:j:v1:id=1", "stale", json_value),
            Answer("j", "rfd:j:v1:id=1", "stale", json_value, error="origin answered 500"),
            Answer("j", "rfd:j:v1:id=1", "hit", self.entry(b'{"n": 2}', at=150.25)),
            Answer("j", "rfd:j:v1:id=2", "hit", other),
            Answer("j", "rfd:j:v1:id=3", "hit", self.entry(b"caf\xc3\xa9", "text/plain")),
            Answer("j", "rfd:j:v1:id=4", "pending"),
        ]
        for now in (100.0, 100.0, 161.2345, 161.0005, 2000.0, 99.0):
            for answer in answers:
                kept, made = bodies.body(answer, now), answer_body(answer, now)
                # The same members in the same order, the same values.
                self.assertEqual(
                    list(json.loads(kept).items()), list(json.loads(made).items()), (answer, now)
                )
        self.assertEqual(json.loads(bodies.body(answers[3], 151.0))["value"], {"n": 2})

    def test_a_value_not_stored_as_json_is_encoded_once_for_its_entry(self) -> None:
        from refresherd.core.refresher import Answer
        from refresherd.http import answers
        from refresherd.http.common import value_member as member

        encoded: list[bytes] = []

        def counted(entry: Any) -> bytes:
            encoded.append(entry.body)
            return member(entry)

        self.patch(answers, "value_member", counted)
        bodies = answers.Bodies()
        text = Answer("j", "rfd:j:v1:id=1", "hit", self.entry(b"<p>caf\xc3\xa9</p>", "text/html"))
        for now in (100.0, 101.5, 130.0):
            self.assertEqual(json.loads(bodies.body(text, now))["value"], "<p>caf\u00e9</p>")
        png = Answer("j", "rfd:j:v1:id=2", "hit", self.entry(b"\x89PNG\xff", "image/png"))
        for now in (100.0, 101.5):
            self.assertEqual(json.loads(bodies.body(png, now))["value_b64"], "iVBOR/8=")
        renewed = Answer("j", "rfd:j:v1:id=1", "hit", self.entry(b"new", "text/plain", at=120.0))
        self.assertEqual(json.loads(bodies.body(renewed, 121.0))["value"], "new")
        self.assertEqual(encoded, [b"<p>caf\xc3\xa9</p>", b"\x89PNG\xff", b"new"])

    def test_the_values_kept_are_bounded_in_bytes(self) -> None:
        from refresherd.core.refresher import Answer
        from refresherd.http import answers

        self.patch(answers, "VALUES_KEPT", 64)
        bodies = answers.Bodies()
        small = [
            Answer("j", f"rfd:j:v1:id={n}", "hit", self.entry(b"x" * 20, "text/plain"))
            for n in range(3)
        ]
        large = Answer("j", "rfd:j:v1:id=9", "hit", self.entry(b"y" * 100, "text/plain"))
        for answer in small[:2]:
            bodies.body(answer, 100.0)
        self.assertEqual(
            (len(bodies._kept), bodies._values), (2, 2 * len(b'"value":"' + 20 * b"x" + b'"'))
        )
        self.assertEqual(json.loads(bodies.body(large, 100.0))["value"], "y" * 100)
        self.assertEqual(len(bodies._kept), 2)  # (larger than all it may keep: not kept)
        bodies.body(small[2], 100.0)  # (past the bound: the others forgotten)
        self.assertEqual(
            (len(bodies._kept), bodies._values), (1, len(b'"value":"' + 20 * b"x" + b'"'))
        )
        self.assertEqual(json.loads(bodies.body(small[0], 101.0))["value"], "x" * 20)

    def test_a_key_s_new_entry_takes_the_place_of_its_old_one_in_the_bound(self) -> None:
        from refresherd.core.refresher import Answer
        from refresherd.http import answers

        self.patch(answers, "VALUES_KEPT", 64)
        bodies = answers.Bodies()
        other = Answer("j", "rfd:j:v1:id=2", "hit", self.entry(b"o" * 10, "text/plain"))
        bodies.body(other, 100.0)
        for n in range(5):  # (each entry of one key: only the last counts)
            entry = self.entry(b"%d" % n * 20, "text/plain", at=100.0 + n)
            bodies.body(Answer("j", "rfd:j:v1:id=1", "hit", entry), 101.0 + n)
        member = len(b'"value":"' + 20 * b"x" + b'"') + len(b'"value":"' + 10 * b"o" + b'"')
        self.assertEqual((len(bodies._kept), bodies._values), (2, member))

    def test_a_kept_head_does_not_keep_its_entry_alive(self) -> None:
        import gc
        import weakref

        from refresherd.core.refresher import Answer
        from refresherd.http.answers import Bodies

        bodies = Bodies()
        entry = self.entry(b'{"n": 1}')
        bodies.body(Answer("j", "rfd:j:v1:id=1", "hit", entry), 100.0)
        gone = weakref.ref(entry)
        del entry
        gc.collect()
        self.assertIsNone(gone())


def _on_the_wire(tests: type[APITestCase]) -> type[APITestCase]:
    """C{tests} again, each request through the public listener's llhttp channel."""
    doc = f"{tests.__doc__ or tests.__name__}: through the public listener's channel (llhttp)."
    return type(f"Wire{tests.__name__}", (tests,), {"wire": True, "__doc__": doc})


WireLookupTests = _on_the_wire(LookupTests)
WireErrorTests = _on_the_wire(ErrorTests)
WireBatchTests = _on_the_wire(BatchTests)
WireAuthAndPutTests = _on_the_wire(AuthAndPutTests)
WireHealthTests = _on_the_wire(HealthTests)
WireStrictJSONTests = _on_the_wire(StrictJSONTests)
WireAccessLogTests = _on_the_wire(AccessLogTests)
WireHostileRequestTests = _on_the_wire(HostileRequestTests)
WireFastPathTests = _on_the_wire(FastPathTests)
