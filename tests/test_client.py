"""
L{refresherd.client}: the requests it sends (method, listener, path, query,
headers, body), the answers it returns and the errors it raises, against an
C{httpx.MockTransport} that answers as refresherd would.  No network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from refresherd import client as client_module
from refresherd.client import (
    ERRORS,
    BadArgs,
    BadJson,
    BadResponse,
    BatchTooLarge,
    BodyTooLarge,
    Client,
    FetchFailed,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    RefresherdClientError,
    ServiceError,
    StoreUnavailable,
    Unauthorized,
    UnknownJob,
    Unreachable,
    UnsupportedMediaType,
    WaitTimeout,
)

TOKEN = "s3cr3t-admin-t0ken"

HIT = {
    "job": "tweets",
    "key": "rfd:tweets:v1:username=bob",
    "status": "hit",
    "content_type": "application/json",
    "fetched_at": 1700000000.0,
    "fresh_until": 1700000900.0,
    "stale_until": 1700087300.0,
    "age": 12.5,
    "value": [{"id": 1, "text": "hello"}],
}


class Recorder:
    """A MockTransport handler that keeps every request and answers with C{answer}."""

    def __init__(self, answer: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if isinstance(self.answer, httpx.Response):
            return self.answer
        return self.answer(request)

    @property
    def only(self) -> httpx.Request:
        assert len(self.requests) == 1
        return self.requests[0]


def make(
    answer: httpx.Response | Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> tuple[Client, Recorder]:
    recorder = Recorder(answer)
    return Client(transport=httpx.MockTransport(recorder), **kwargs), recorder


def raw_path(request: httpx.Request) -> bytes:
    return request.url.raw_path.partition(b"?")[0]


def query(request: httpx.Request) -> dict[str, list[str]]:
    """The query as the server decodes it (HTML form decoding)."""
    return parse_qs(request.url.query.decode("ascii"), keep_blank_values=True)


def error(status: int, code: str, message: str) -> httpx.Response:
    """An error answer exactly as refresherd renders it."""
    headers = {"WWW-Authenticate": "Bearer"} if code == "unauthorized" else {}
    return httpx.Response(
        status, json={"error": {"code": code, "message": message}}, headers=headers
    )


# -- get ------------------------------------------------------------------------------------


def test_get_sends_the_arguments_as_a_query_to_the_public_listener_and_returns_the_answer() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    with client:
        answer = client.get("tweets", username="bob", lang="en")
    request = recorder.only
    assert request.method == "GET"
    assert request.url.host == "127.0.0.1" and request.url.port == 8080
    assert raw_path(request) == b"/v1/jobs/tweets"
    assert query(request) == {"username": ["bob"], "lang": ["en"]}
    assert request.content == b""
    assert answer == HIT


def test_get_encodes_argument_values_so_the_server_decodes_them_back() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    client.get("search", q="a b+c&d=é/%")
    assert query(recorder.only) == {"q": ["a b+c&d=é/%"]}


def test_get_takes_arguments_named_job_and_self() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    client.get("report", job="cron", self="me")
    assert raw_path(recorder.only) == b"/v1/jobs/report"
    assert query(recorder.only) == {"job": ["cron"], "self": ["me"]}


def test_get_without_arguments_sends_no_query() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    client.get("tweets")
    assert recorder.only.url.query == b""


def test_get_returns_a_pending_answer_of_202() -> None:
    pending = {"job": "slow", "key": "rfd:slow:v1:", "status": "pending"}
    client, _ = make(httpx.Response(202, json=pending))
    assert client.get("slow") == pending


def test_a_job_name_cannot_escape_its_path_segment() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    client.get("../purge")
    assert raw_path(recorder.only) == b"/v1/jobs/..%2Fpurge"


# -- token and headers ----------------------------------------------------------------------


def test_the_token_is_sent_as_a_bearer_token_to_both_listeners() -> None:
    client, recorder = make(httpx.Response(200, json={"jobs": []}), token=TOKEN)
    client.jobs()
    recorder.answer = httpx.Response(200, json=HIT)
    client.get("tweets", username="bob")
    assert [r.url.port for r in recorder.requests] == [8081, 8080]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in recorder.requests)
    assert all(r.headers["Accept"] == "application/json" for r in recorder.requests)


def test_without_a_token_no_authorization_is_sent() -> None:
    client, recorder = make(httpx.Response(200, json={"jobs": []}))
    client.jobs()
    assert "Authorization" not in recorder.only.headers


def test_the_repr_of_a_client_never_shows_its_token() -> None:
    client, _ = make(httpx.Response(200, json={}), token=TOKEN)
    assert TOKEN not in repr(client)
    assert "127.0.0.1:8081" in repr(client)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "tab\t"])
def test_a_token_that_cannot_be_a_header_value_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII") as raised:
        Client(token=token)
    if token:
        assert token not in str(raised.value)


# -- purge ----------------------------------------------------------------------------------


def test_purge_posts_keys_jobs_tags_and_soft_as_json_and_returns_the_count() -> None:
    client, recorder = make(httpx.Response(200, json={"purged": 4}))
    purged = client.purge(keys=["k1", "k2"], jobs=("tweets",), tags=["user:bob"], soft=True)
    request = recorder.only
    assert (request.method, request.url.port, raw_path(request)) == ("POST", 8081, b"/v1/purge")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "keys": ["k1", "k2"],
        "jobs": ["tweets"],
        "tags": ["user:bob"],
        "soft": True,
    }
    assert purged == 4


def test_purge_sends_empty_lists_and_soft_false_for_what_is_not_given() -> None:
    client, recorder = make(httpx.Response(200, json={"purged": 1}))
    assert client.purge(keys=["k1"]) == 1
    assert json.loads(recorder.only.content) == {
        "keys": ["k1"],
        "jobs": [],
        "tags": [],
        "soft": False,
    }


def test_purge_refuses_a_single_string_for_a_list() -> None:
    client, recorder = make(httpx.Response(200, json={"purged": 1}))
    with pytest.raises(TypeError, match="keys"):
        client.purge(keys="k1")
    assert recorder.requests == []


def test_purge_without_a_count_in_the_answer_is_a_bad_response() -> None:
    client, _ = make(httpx.Response(200, json={"ok": True}))
    with pytest.raises(BadResponse):
        client.purge(keys=["k1"])


# -- inspect --------------------------------------------------------------------------------


def test_inspect_percent_encodes_the_key_exactly_once() -> None:
    key = "rfd:s:v1:q=caf%C3%A9"
    client, recorder = make(httpx.Response(200, json={"key": key, "job": "s"}))
    assert client.inspect(key) == {"key": key, "job": "s"}
    request = recorder.only
    assert request.method == "GET" and request.url.port == 8081
    assert raw_path(request) == b"/v1/entries/rfd%3As%3Av1%3Aq%3Dcaf%25C3%25A9"
    assert request.url.query == b""
    # The server percent-decodes the path once and gets the key back.
    assert unquote(raw_path(request).decode("ascii")[len("/v1/entries/") :]) == key


def test_inspect_with_value_asks_for_value_1() -> None:
    client, recorder = make(httpx.Response(200, json={"key": "k", "value": 1}))
    assert client.inspect("k", value=True)["value"] == 1
    assert query(recorder.only) == {"value": ["1"]}


def test_inspect_of_an_absent_key_raises_not_found() -> None:
    client, _ = make(error(404, "not_found", "no entry 'k'"))
    with pytest.raises(NotFound) as raised:
        client.inspect("k")
    assert (raised.value.status, raised.value.code) == (404, "not_found")


# -- refresh and jobs -----------------------------------------------------------------------


def test_refresh_posts_an_empty_json_object_with_the_arguments_in_the_query() -> None:
    pending = {"job": "tweets", "key": "rfd:tweets:v1:username=bob", "status": "pending"}
    client, recorder = make(httpx.Response(202, json=pending))
    assert client.refresh("tweets", username="bob") == pending
    request = recorder.only
    assert (request.method, request.url.port) == ("POST", 8081)
    assert raw_path(request) == b"/v1/jobs/tweets/refresh"
    assert query(request) == {"username": ["bob"]}
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == b"{}"


def test_jobs_returns_the_list_of_jobs() -> None:
    described = [{"name": "tweets", "fetch": "http", "fresh": 900.0}]
    client, recorder = make(httpx.Response(200, json={"jobs": described}))
    assert client.jobs() == described
    assert (recorder.only.method, raw_path(recorder.only)) == ("GET", b"/v1/jobs")


def test_jobs_without_a_list_is_a_bad_response() -> None:
    client, _ = make(httpx.Response(200, json={"jobs": "tweets"}))
    with pytest.raises(BadResponse):
        client.jobs()


def test_a_success_that_is_not_a_json_object_is_a_bad_response() -> None:
    client, _ = make(httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(BadResponse) as raised:
        client.get("tweets")
    assert isinstance(raised.value, RefresherdClientError)
    assert "\n" not in raised.value.message


# -- base URLs ------------------------------------------------------------------------------


def test_base_urls_may_have_a_path_prefix_and_trailing_slashes() -> None:
    client, recorder = make(
        httpx.Response(200, json={"jobs": []}),
        url="https://cache.example:9000/rfd/",
        admin_url="http://admin.example/ops//",
    )
    client.jobs()
    recorder.answer = httpx.Response(200, json=HIT)
    client.get("tweets")
    admin, public = recorder.requests
    assert str(admin.url) == "http://admin.example/ops/v1/jobs"
    assert str(public.url) == "https://cache.example:9000/rfd/v1/jobs/tweets"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8081", "ftp://host/", "http://", "http://h:99999", "http://h/?a=1"]
)
def test_a_base_url_that_is_not_http_with_a_host_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Client(admin_url=url)


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Client(timeout=0)


def test_close_closes_the_pooled_connections() -> None:
    client, _ = make(httpx.Response(200, json={"jobs": []}))
    with client as same:
        assert same is client
    with pytest.raises(RuntimeError):
        client.jobs()


# -- errors ---------------------------------------------------------------------------------

SPEC_CODES = [
    ("unknown_job", 404, UnknownJob),
    ("bad_args", 400, BadArgs),
    ("bad_json", 400, BadJson),
    ("body_too_large", 413, BodyTooLarge),
    ("unauthorized", 401, Unauthorized),
    ("forbidden", 403, Forbidden),
    ("fetch_failed", 502, FetchFailed),
    ("wait_timeout", 504, WaitTimeout),
    ("store_unavailable", 503, StoreUnavailable),
    ("overloaded", 503, Overloaded),
    ("not_found", 404, NotFound),
    ("method_not_allowed", 405, MethodNotAllowed),
    ("unsupported_media_type", 415, UnsupportedMediaType),
    ("batch_too_large", 413, BatchTooLarge),
]


@pytest.mark.parametrize(("code", "status", "cls"), SPEC_CODES)
def test_each_error_code_raises_its_own_class(
    code: str, status: int, cls: type[ServiceError]
) -> None:
    client, _ = make(error(status, code, f"what went wrong ({code})"))
    with pytest.raises(cls) as raised:
        client.get("tweets")
    e = raised.value
    assert type(e) is cls
    assert isinstance(e, ServiceError) and isinstance(e, RefresherdClientError)
    assert (e.status, e.code, e.message) == (status, code, f"what went wrong ({code})")
    assert str(e) == f"{code}: what went wrong ({code})"


def test_every_spec_code_has_a_class() -> None:
    assert {code: cls for code, _, cls in SPEC_CODES} == dict(ERRORS)


def test_an_unknown_error_code_is_a_plain_service_error() -> None:
    client, _ = make(error(500, "internal", "internal error"))
    with pytest.raises(ServiceError) as raised:
        client.jobs()
    assert type(raised.value) is ServiceError
    assert (raised.value.status, raised.value.code) == (500, "internal")


@pytest.mark.parametrize(
    "body", [b"<html><body>Bad Gateway</body></html>", b'{"error": "nope"}', b"[1]", b""]
)
def test_an_error_that_is_not_the_error_object_gets_code_http_status(body: bytes) -> None:
    client, _ = make(httpx.Response(502, content=body))
    with pytest.raises(ServiceError) as raised:
        client.purge(keys=["k"])
    e = raised.value
    assert type(e) is ServiceError
    assert (e.status, e.code) == (502, "http_502")
    assert e.message == "the service answered 502 Bad Gateway"


def test_a_multi_line_server_message_becomes_one_line() -> None:
    client, _ = make(error(400, "bad_args", "first\nsecond\r\n  third"))
    with pytest.raises(BadArgs) as raised:
        client.get("tweets")
    assert raised.value.message == "first second third"


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def test_a_refused_connection_is_unreachable_naming_the_listener() -> None:
    client, _ = make(refuse)
    with pytest.raises(Unreachable) as raised:
        client.purge(keys=["k"])
    assert raised.value.url == "http://127.0.0.1:8081"
    assert raised.value.message == "cannot reach http://127.0.0.1:8081: connection refused"
    assert str(raised.value) == raised.value.message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_unreachable_url_is_shown_without_its_credentials() -> None:
    client, _ = make(refuse, url="http://user:pw@cache.example:8080")
    with pytest.raises(Unreachable) as raised:
        client.get("tweets")
    assert raised.value.message == "cannot reach http://cache.example:8080: connection refused"


@pytest.mark.parametrize(
    ("exception", "text", "message"),
    [
        (httpx.ReadTimeout, "timed out", "no answer from http://127.0.0.1:8080 within 2.5 s"),
        (
            httpx.ConnectTimeout,
            "timed out",
            "cannot reach http://127.0.0.1:8080: no connection within 2.5 s",
        ),
        (
            httpx.RemoteProtocolError,
            "Server disconnected without sending a response.",
            "cannot reach http://127.0.0.1:8080: the connection was closed without an answer",
        ),
        (
            httpx.ConnectError,
            "[Errno -2] Name or service not known",
            "cannot reach http://127.0.0.1:8080: unknown host",
        ),
        (
            httpx.ReadError,
            "[Errno 104] Connection reset\nby peer",
            "cannot reach http://127.0.0.1:8080: [Errno 104] Connection reset by peer",
        ),
    ],
)
def test_timeouts_and_lost_connections_are_unreachable_with_one_line(
    exception: type[httpx.TransportError], text: str, message: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exception(text, request=request)

    client, _ = make(fail, timeout=2.5)
    with pytest.raises(Unreachable) as raised:
        client.get("tweets")
    assert raised.value.message == message


def test_the_client_module_imports_nothing_of_the_server() -> None:
    source = open(client_module.__file__, encoding="utf-8").read()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "refresherd" in line]
