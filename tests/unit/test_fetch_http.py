"""
The HTTP fetcher (docs/configuration.md, "HTTP jobs" and "What counts as a
failed fetch"): what it sends (URL, headers, body, signature), what counts as
a success, the byte cap, and that cancelling a fetch closes its connection;
against an in-memory twisted.web resource through treq's StubTreq (the
production client on a real server: tests/integration/test_fetch_http.py).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from typing import Any

import attrs
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET, Request

from refresherd.config import Secret
from refresherd.entry import Fetched, is_json_content_type
from refresherd.errors import BadArgs, FetchError
from refresherd.fetchers.http import HTTPFetcher
from refresherd.interfaces import IFetcher
from refresherd.signing import SIGNATURE_HEADER
from refresherd.signing import sign as sign_request  # the fetcher's signer
from tests.deferreds import failure, result
from tests.stub_origin import Handler, Origin, Seen, answer, make_job, pending
from tests.stub_treq import StubTreq

SECRET = "s3cret-signing-key"
HEADER_SECRET = "Bearer very-secret-token"


def stub_fetcher(
    handler: Handler, clock: Clock | None = None, **job: Any
) -> tuple[HTTPFetcher, Origin, StubTreq]:
    origin = Origin(handler)
    stub = StubTreq(origin)
    fetcher = HTTPFetcher(
        make_job(**job),
        stub,
        clock or Clock(),
        random_bytes=lambda n: bytes(range(n)),
    )
    return fetcher, origin, stub


def fetched(d: Deferred[Fetched]) -> Fetched:
    value = result(d)
    assert isinstance(value, Fetched), value
    return value


def fetch_error(d: Deferred[Fetched]) -> str:
    value = failure(d)
    assert isinstance(value, FetchError), value
    message = str(value)
    assert "\n" not in message
    return message


def test_provides_ifetcher() -> None:
    fetcher, _, _ = stub_fetcher(answer())
    assert IFetcher.providedBy(fetcher)


def test_2xx_body_and_content_type_are_the_value() -> None:
    fetcher, origin, _ = stub_fetcher(answer(200, b"hello", b"text/plain; charset=utf-8"))
    value = fetched(fetcher.fetch({"id": "42"}))
    assert value == Fetched(body=b"hello", content_type="text/plain; charset=utf-8")
    [seen] = origin.seen
    assert (seen.method, seen.uri) == (b"GET", b"/items/42")


@pytest.mark.parametrize("code", [201, 203, 204, 299])
def test_every_2xx_is_a_success(code: int) -> None:
    fetcher, _, _ = stub_fetcher(answer(code, b"" if code == 204 else b"x"))
    assert isinstance(fetched(fetcher.fetch({"id": "1"})), Fetched)


def test_content_type_defaults_to_octet_stream() -> None:
    fetcher, _, _ = stub_fetcher(answer(200, b"\x00\x01", content_type=None))
    assert fetched(fetcher.fetch({"id": "1"})).content_type == "application/octet-stream"


@pytest.mark.parametrize("code", [400, 401, 404, 429, 500, 502, 503])
def test_a_non_2xx_answer_is_a_failure_naming_its_status(code: int) -> None:
    fetcher, _, _ = stub_fetcher(answer(code, b"error page"))
    assert fetch_error(fetcher.fetch({"id": "1"})) == f"origin answered {code}"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_failures_and_are_not_followed(code: int) -> None:
    def handler(request: Request) -> bytes:
        if request.path != b"/items/1":
            return b"redirected"
        request.setResponseCode(code)
        request.setHeader(b"location", b"http://origin.test/elsewhere")
        return b""

    fetcher, origin, _ = stub_fetcher(handler)
    message = fetch_error(fetcher.fetch({"id": "1"}))
    assert message == f"origin answered {code} (redirects are not followed)"
    assert [seen.uri for seen in origin.seen] == [b"/items/1"]


def test_job_headers_are_sent_and_never_appear_in_errors() -> None:
    fetcher, origin, _ = stub_fetcher(
        answer(401, b"who are you"),
        headers={
            "Accept": Secret("application/json"),
            "Authorization": Secret(HEADER_SECRET, source="env"),
        },
    )
    message = fetch_error(fetcher.fetch({"id": "1"}))
    assert message == "origin answered 401"
    [seen] = origin.seen
    assert seen.headers[b"accept"] == [b"application/json"]
    assert seen.headers[b"authorization"] == [HEADER_SECRET.encode()]
    assert seen.headers[b"user-agent"][0].startswith(b"refresherd/")
    assert SIGNATURE_HEADER.lower().encode() not in seen.headers
    assert seen.body == b""


def test_post_sends_the_rendered_json_body() -> None:
    fetcher, origin, _ = stub_fetcher(
        answer(200, b"{}", b"application/json"),
        method="POST",
        body={"user": "{id}", "list": [1, "x-{id}", None], "{id}": True},
    )
    fetched(fetcher.fetch({"id": 'b"o\\b'}))
    [seen] = origin.seen
    assert seen.method == b"POST"
    assert seen.headers[b"content-type"] == [b"application/json"]
    assert json.loads(seen.body) == {
        "user": 'b"o\\b',
        "list": [1, 'x-b"o\\b', None],
        'b"o\\b': True,
    }


def test_a_job_content_type_header_is_kept_for_post() -> None:
    fetcher, origin, _ = stub_fetcher(
        answer(),
        method="POST",
        body={"a": "{id}"},
        headers={"Content-Type": Secret("application/vnd.api+json")},
    )
    fetched(fetcher.fetch({"id": "1"}))
    assert origin.seen[0].headers[b"content-type"] == [b"application/vnd.api+json"]


@pytest.mark.parametrize(
    "value, path",
    [
        ("a/b", b"/items/a%2Fb"),
        ("x?admin=1", b"/items/x%3Fadmin%3D1"),
        ("x#frag", b"/items/x%23frag"),
        ("../../etc", b"/items/..%2F..%2Fetc"),
        ("caf\u00e9 &", b"/items/caf%C3%A9%20%26"),
        ("@evil.test", b"/items/%40evil.test"),
    ],
)
def test_argument_values_are_percent_encoded_and_stay_in_the_path(value: str, path: bytes) -> None:
    fetcher, origin, _ = stub_fetcher(answer())
    fetched(fetcher.fetch({"id": value}))
    [seen] = origin.seen
    assert seen.uri == path
    assert seen.host == b"origin.test"


def test_argument_values_in_the_query_cannot_add_parameters() -> None:
    fetcher, origin, _ = stub_fetcher(answer(), url="http://origin.test/search?q={id}&page=1")
    fetched(fetcher.fetch({"id": "x&page=99/../y"}))
    [request] = origin.requests
    assert request.uri == b"/search?q=x%26page%3D99%2F..%2Fy&page=1"
    assert request.args == {b"q": [b"x&page=99/../y"], b"page": [b"1"]}


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_are_refused_before_any_request(value: str) -> None:
    fetcher, origin, _ = stub_fetcher(answer())
    with pytest.raises(BadArgs):
        fetcher.fetch({"id": value})
    assert origin.seen == []


def verify(secret: bytes, header: bytes, seen: Seen, now: int) -> bool:
    """What a Django application does with the signature (written independently)."""
    fields = dict(part.split("=", 1) for part in header.decode("ascii").split(","))
    if abs(int(fields["t"]) - now) > 300 or len(fields["n"]) != 16:
        return False
    message = (
        f"{fields['t']}\n{fields['n']}\n{seen.method.decode()}\n{seen.uri.decode()}\n".encode()
        + seen.body
    )
    expected = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def test_signed_get_carries_a_verifiable_signature() -> None:
    clock = Clock()
    clock.advance(1_700_000_000.75)
    fetcher, origin, _ = stub_fetcher(
        answer(), clock, url="http://origin.test/u/{id}?x={id}", sign=Secret(SECRET, "env")
    )
    fetched(fetcher.fetch({"id": "b/o b"}))
    [seen] = origin.seen
    [header] = seen.headers[SIGNATURE_HEADER.lower().encode()]
    assert header.startswith(b"t=1700000000,n=0001020304050607,v1=")
    assert verify(SECRET.encode(), header, seen, 1_700_000_000)
    assert not verify(b"another key", header, seen, 1_700_000_000)
    assert not verify(SECRET.encode(), header, seen, 1_700_000_301)


def test_signed_post_covers_the_body() -> None:
    clock = Clock()
    clock.advance(1_700_000_123)
    fetcher, origin, _ = stub_fetcher(
        answer(), clock, method="POST", body={"user": "{id}"}, sign=Secret(SECRET)
    )
    fetched(fetcher.fetch({"id": "bob"}))
    [seen] = origin.seen
    [header] = seen.headers[SIGNATURE_HEADER.lower().encode()]
    assert verify(SECRET.encode(), header, seen, 1_700_000_123)
    tampered = attrs.evolve(seen, body=seen.body.replace(b"bob", b"eve"))
    assert not verify(SECRET.encode(), header, tampered, 1_700_000_123)


def test_each_signed_request_has_a_new_nonce() -> None:
    nonces = iter([b"\x00" * 8, b"\xff" * 8])
    origin = Origin(answer())
    fetcher = HTTPFetcher(
        make_job(sign=Secret(SECRET)),
        StubTreq(origin),
        Clock(),
        random_bytes=lambda n: next(nonces),
    )
    fetched(fetcher.fetch({"id": "1"}))
    fetched(fetcher.fetch({"id": "1"}))
    headers = [s.headers[SIGNATURE_HEADER.lower().encode()][0] for s in origin.seen]
    assert [h.split(b",")[1] for h in headers] == [b"n=0000000000000000", b"n=ffffffffffffffff"]


def test_sign_request_formula() -> None:
    message = b'1700000000\n0123456789abcdef\nPOST\n/a%2Fb?x=1\n{"a": 1}'
    digest = hmac.new(b"key", message, hashlib.sha256).hexdigest()
    value = sign_request(b"key", 1700000000, "0123456789abcdef", "POST", "/a%2Fb?x=1", b'{"a": 1}')
    assert value == f"t=1700000000,n=0123456789abcdef,v1={digest}"
    assert digest == digest.lower() and len(digest) == 64


@pytest.mark.parametrize(
    "content_type, expected",
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("application/vnd.api+json; ext=x", True),
        ("text/json", False),
        ("text/plain", False),
        ("application/jsonl", False),
        ("+json", False),
    ],
)
def test_json_content_types(content_type: str, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"application/json; charset=utf-8", b"a/b+json"]
)
@pytest.mark.parametrize("body", [b"{nope", b"", b'"\xff"', b"[1, 2"])
def test_a_json_content_type_with_a_body_that_does_not_parse_is_a_failure(
    content_type: bytes, body: bytes
) -> None:
    fetcher, _, _ = stub_fetcher(answer(200, body, content_type))
    assert fetch_error(fetcher.fetch({"id": "1"})).startswith("body is not valid JSON: ")


def test_a_json_body_that_parses_is_kept_as_sent() -> None:
    body = '{"name": "caf\u00e9", "n": [1, 2.5, null]}'.encode()
    fetcher, _, _ = stub_fetcher(answer(200, body, b"application/json; charset=utf-8"))
    assert fetched(fetcher.fetch({"id": "1"})).body == body


def test_a_body_at_the_cap_is_accepted() -> None:
    fetcher, _, _ = stub_fetcher(answer(200, b"x" * 1000), max_value_bytes=1000)
    assert len(fetched(fetcher.fetch({"id": "1"})).body) == 1000


def test_a_larger_body_is_refused() -> None:
    fetcher, origin, stub = stub_fetcher(answer(200, b"x" * 1001), max_value_bytes=1000)
    assert fetch_error(fetcher.fetch({"id": "1"})) == "body larger than 1000 bytes"


def test_an_announced_length_over_the_cap_fails_at_once_and_closes() -> None:
    def handler(request: Request) -> int:
        request.setHeader(b"content-length", b"5000000")
        request.write(b"x" * 10)
        return NOT_DONE_YET

    fetcher, origin, stub = stub_fetcher(handler, max_value_bytes=1000)
    d = fetcher.fetch({"id": "1"})
    stub.flush()
    assert fetch_error(d) == "body larger than 1000 bytes"
    stub.flush()
    assert len(origin.lost) == 1


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_cap() -> None:
    fetcher, origin, stub = stub_fetcher(pending, max_value_bytes=1000)
    d = fetcher.fetch({"id": "1"})
    [request] = origin.requests
    request.setHeader(b"content-type", b"application/octet-stream")
    request.write(b"a" * 600)
    stub.flush()
    assert not d.called
    request.write(b"b" * 600)
    stub.flush()
    assert fetch_error(d) == "body larger than 1000 bytes"
    stub.flush()
    assert len(origin.lost) == 1, "the connection was not closed"


def test_a_chunked_body_within_the_cap_is_collected() -> None:
    fetcher, origin, stub = stub_fetcher(pending, max_value_bytes=1000)
    d = fetcher.fetch({"id": "1"})
    [request] = origin.requests
    for part in (b"ab", b"cd", b"ef"):
        request.write(part)
        stub.flush()
    assert not d.called
    request.finish()
    stub.flush()
    assert fetched(d).body == b"abcdef"


def test_the_cap_counts_decompressed_bytes() -> None:
    bomb = gzip.compress(b"\x00" * 200_000)

    def handler(request: Request) -> bytes:
        request.setHeader(b"content-encoding", b"gzip")
        return bomb

    fetcher, _, _ = stub_fetcher(handler, max_value_bytes=100_000)
    assert len(bomb) < 100_000
    assert fetch_error(fetcher.fetch({"id": "1"})) == "body larger than 100000 bytes"


def test_cancelling_before_the_answer_closes_the_connection() -> None:
    fetcher, origin, stub = stub_fetcher(pending)
    d = fetcher.fetch({"id": "1"})
    assert not d.called
    d.cancel()
    assert isinstance(failure(d), CancelledError)
    stub.flush()
    assert len(origin.lost) == 1


def test_cancelling_while_the_body_streams_closes_the_connection() -> None:
    fetcher, origin, stub = stub_fetcher(pending)
    d = fetcher.fetch({"id": "1"})
    [request] = origin.requests
    request.write(b"first part")
    stub.flush()
    assert not d.called
    d.cancel()
    assert isinstance(failure(d), CancelledError)
    stub.flush()
    assert len(origin.lost) == 1
    request.write(b"more")  # the origin goes on writing into a closed connection
    stub.flush()


def test_cancelling_after_success_changes_nothing() -> None:
    fetcher, _, _ = stub_fetcher(answer())
    d = fetcher.fetch({"id": "1"})
    d.cancel()
    assert fetched(d).body == b"ok"


@pytest.mark.parametrize("content_type", [b"text/plain\x01", b"text/\x85html", b"text/plain;\tq=1"])
def test_a_content_type_no_reader_of_the_store_would_take_is_a_failure(
    content_type: bytes,
) -> None:
    """Stored, it would read as absent in every process, and be fetched again at every request."""
    fetcher, _, _ = stub_fetcher(answer(200, b"x", content_type))
    message = fetch_error(fetcher.fetch({"id": "1"}))
    assert message.startswith("origin sent a Content-Type refresherd cannot store: ")


def test_a_latin1_content_type_is_kept() -> None:
    fetcher, _, _ = stub_fetcher(answer(200, b"x", b"text/plain; name=caf\xe9"))
    assert fetched(fetcher.fetch({"id": "1"})).content_type == "text/plain; name=caf\u00e9"


def with_headers(headers: dict[bytes, bytes], code: int = 200, body: bytes = b"ok") -> Handler:
    def handler(request: Request) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain")
        for name, value in headers.items():
            request.setHeader(name, value)
        return body if code != 304 else b""

    return handler


VALIDATORS = {b"etag": b'"abc"', b"last-modified": b"Sun, 06 Nov 1994 08:49:37 GMT"}


def test_validators_are_kept_whatever_freshness_says() -> None:
    fetcher, _, _ = stub_fetcher(with_headers(VALIDATORS))
    value = fetched(fetcher.fetch({"id": "1"}))
    assert value.validators == ('"abc"', "Sun, 06 Nov 1994 08:49:37 GMT")
    assert (value.lifetimes, value.no_store, value.tags) == (None, "", ())


def test_a_refresh_with_validators_is_conditional() -> None:
    fetcher, origin, _ = stub_fetcher(with_headers({}))
    fetched(fetcher.fetch({"id": "1"}, ('"abc"', "Sun, 06 Nov 1994 08:49:37 GMT")))
    fetched(fetcher.fetch({"id": "1"}))
    conditional, plain = origin.seen
    assert conditional.headers[b"if-none-match"] == [b'"abc"']
    assert conditional.headers[b"if-modified-since"] == [b"Sun, 06 Nov 1994 08:49:37 GMT"]
    assert b"if-none-match" not in plain.headers and b"if-modified-since" not in plain.headers


def test_a_304_to_a_conditional_request_is_not_modified() -> None:
    fetcher, _, _ = stub_fetcher(with_headers({b"etag": b'"abc"'}, code=304))
    value = fetched(fetcher.fetch({"id": "1"}, ('"abc"', "")))
    assert value.not_modified and value.validators == ('"abc"', "")


def test_a_304_to_a_request_that_was_not_conditional_is_a_failure() -> None:
    fetcher, _, _ = stub_fetcher(with_headers({}, code=304))
    assert "not conditional" in fetch_error(fetcher.fetch({"id": "1"}))


def test_with_freshness_origin_the_headers_set_windows_no_store_and_tags() -> None:
    headers = {
        b"cache-control": b"max-age=30, stale-while-revalidate=5, private",
        b"surrogate-key": b"a b " + b"x" * 300,
    }
    fetcher, _, _ = stub_fetcher(with_headers(headers), freshness="origin", stale=10.0)
    value = fetched(fetcher.fetch({"id": "1"}))
    assert value.lifetimes is not None
    assert (value.lifetimes.fresh, value.lifetimes.stale) == (30, 5)
    assert value.no_store == "Cache-Control private"
    assert (value.tags, value.tags_dropped) == (("a", "b"), 1)


def test_an_origins_freshness_is_capped_by_max_fresh() -> None:
    fetcher, _, _ = stub_fetcher(
        with_headers({b"cache-control": b"s-maxage=9999"}),
        freshness="origin",
        fresh=60.0,
        max_fresh=120.0,
    )
    lifetimes = fetched(fetcher.fetch({"id": "1"})).lifetimes
    assert lifetimes is not None and lifetimes.fresh == 120
    assert "capped by max_fresh" in lifetimes.why["fresh"]


def test_caching_headers_past_the_bound_are_not_read_and_the_answer_not_stored() -> None:
    def huge(request: Request) -> bytes | int:
        for _ in range(3):  # three lines, each under the server's limit
            request.responseHeaders.addRawHeader(b"cache-control", b"max-age=60, " + b"x" * 6000)
        return with_headers(VALIDATORS)(request)

    fetcher, _, _ = stub_fetcher(huge, freshness="origin")
    value = fetched(fetcher.fetch({"id": "1"}))
    assert value.no_store == "caching headers over 16384 bytes"
    assert (value.validators, value.lifetimes) == (("", ""), None)
    plain, _, _ = stub_fetcher(huge)
    value = fetched(plain.fetch({"id": "1"}))
    assert (value.no_store, value.validators) == ("", ("", ""))
