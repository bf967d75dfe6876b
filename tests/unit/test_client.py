"""
L{refresherd.client}: the requests it sends (method, listener, path, query,
headers, body), the answers it returns and the errors it raises, against an
C{httpx.MockTransport} that answers as refresherd would.  No network.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from refresherd import client as client_module
from refresherd.client import (
    ERRORS,
    BadArgs,
    BadJson,
    BadRequest,
    BadResponse,
    BatchTooLarge,
    BodyTooLarge,
    CircuitBreaker,
    CircuitOpen,
    Client,
    FetchFailed,
    Forbidden,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    Pending,
    Raw,
    RefresherdClientError,
    ReloadRefused,
    ReloadRunning,
    ReloadUnsupported,
    ServiceError,
    StoreUnavailable,
    Unauthorized,
    UnknownJob,
    Unreachable,
    UnsupportedMediaType,
    UriTooLong,
    WaitTimeout,
    answer_value,
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


def test_warm_posts_the_argument_sets_and_returns_one_result_each() -> None:
    results = [{"key": "rfd:user:v1:name=bob", "result": "done"}, {"key": None, "result": "failed"}]
    client, recorder = make(httpx.Response(200, json={"job": "user", "results": results}))
    assert client.warm("user", [{"name": "bob"}, {"nom": "x"}], timeout=120) == results
    request = recorder.only
    assert (request.method, request.url.port, raw_path(request)) == (
        "POST",
        8081,
        b"/v1/jobs/user/warm",
    )
    assert json.loads(request.content) == {"args": [{"name": "bob"}, {"nom": "x"}]}
    assert request.extensions["timeout"]["read"] == 120


@pytest.mark.parametrize(
    "answer",
    [{"job": "user"}, {"results": [{"key": "k", "result": "done"}] * 2}, {"results": ["done"]}],
)
def test_a_warm_answer_without_a_result_per_set_is_a_bad_response(answer: Any) -> None:
    client, _ = make(httpx.Response(200, json=answer))
    with pytest.raises(BadResponse, match="no result for each argument set"):
        client.warm("user", [{"name": "bob"}])


def test_a_warm_that_gets_no_answer_in_time_names_its_own_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client, _ = make(slow, timeout=2)
    with pytest.raises(Unreachable, match="within 300 s"):
        client.warm("user", [{"name": "bob"}], timeout=300)


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

ERROR_CODES = [
    # The codes of docs/README.md, "Errors", and the classes of docs/clients.md, "Errors".
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
    ("uri_too_long", 414, UriTooLong),
    ("headers_too_large", 431, HeadersTooLarge),
    ("bad_request", 400, BadRequest),
    ("reload_refused", 422, ReloadRefused),
    ("reload_running", 409, ReloadRunning),
    ("reload_unsupported", 501, ReloadUnsupported),
]


@pytest.mark.parametrize(("code", "status", "cls"), ERROR_CODES)
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


def test_every_documented_code_has_a_class() -> None:
    assert {code: cls for code, _, cls in ERROR_CODES} == dict(ERRORS)


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


# The pure modules of the server that direct reads share with it (keys, entries,
# marks, the decision, tag templates): none imports Twisted.
SHARED_WITH_THE_SERVER = (
    "from refresherd.keys ",
    "from refresherd.entry ",
    "from refresherd.core import policy",
    "from refresherd.core.marks ",
    "from refresherd.core.templates ",
)


def test_the_client_module_imports_nothing_of_the_server_but_its_pure_modules() -> None:
    # Every module of refresherd.client imports only its siblings of refresherd and
    # the pure modules direct reads share with the server, by absolute name (a
    # relative import would slip past this test).
    package = Path(client_module.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert [module.name for module in modules if module.name != "__init__.py"]
    for module in modules:
        source = module.read_text(encoding="utf-8")
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in imports if line.startswith("from .")], module.name
        ours = [line for line in imports if "refresherd" in line]
        allowed = (
            "from refresherd.client.",
            "from refresherd.client import ",
            *SHARED_WITH_THE_SERVER,
        )
        assert all(line.startswith(allowed) for line in ours), (module.name, ours)


def _imported(module: str) -> set[str]:
    """The modules C{module}'s source imports at its top level (read, not run)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if importlib.util.find_spec(name.rsplit(".", 1)[0])}


def test_nothing_the_client_imports_imports_twisted() -> None:
    # Followed through the server's pure modules it shares (and refresherd's
    # __init__): no Twisted, Klein or treq anywhere.
    seen: set[str] = set()
    todo = ["refresherd"] + [
        f"refresherd.client.{path.stem}"
        for path in Path(client_module.__file__).parent.glob("*.py")
        if path.stem != "__init__"
    ]
    while todo:
        module = todo.pop()
        if module in seen or not module.startswith("refresherd"):
            continue
        seen.add(module)
        try:
            imported = _imported(module)
        except (ModuleNotFoundError, AssertionError):
            continue  # a name imported from a module, not a module
        assert not [n for n in imported if n.split(".")[0] in ("twisted", "klein", "treq")], module
        todo.extend(imported)
    assert "refresherd.core.policy" in seen and "refresherd.entry" in seen


# -- job arguments --------------------------------------------------------------------------


def test_job_arguments_may_be_a_mapping_after_the_job_as_well_as_keywords() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    client.get("report", {"default": "x", "args": "y", "content_type": "z"}, year=2024)
    assert query(recorder.only) == {
        "default": ["x"],
        "args": ["y"],
        "content_type": ["z"],
        "year": ["2024"],
    }


def test_integer_and_uuid_argument_values_are_sent_as_their_text() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    client.get("user", user_id=42, ident=ident)
    assert query(recorder.only) == {"user_id": ["42"], "ident": [str(ident)]}


@pytest.mark.parametrize("value", [True, None, 1.5, b"bytes", ["a"]])
def test_other_argument_values_are_refused_before_any_request(value: object) -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    with pytest.raises(TypeError, match="'n'"):
        client.get("square", n=value)  # type: ignore[call-overload]
    assert recorder.requests == []


def test_an_argument_given_in_the_mapping_and_as_a_keyword_is_refused() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    with pytest.raises(TypeError, match="twice"):
        client.get("user", {"name": "a"}, name="b")
    with pytest.raises(TypeError, match="after the job name"):
        client.get("user", args={"name": "a"})  # type: ignore[call-overload]
    assert recorder.requests == []


# -- default ----------------------------------------------------------------------------------

OUTAGES = [
    error(503, "store_unavailable", "the store is down"),
    error(503, "overloaded", "queue full"),
    error(504, "wait_timeout", "no value within 5 s"),
    error(502, "fetch_failed", "origin answered 500"),
    httpx.Response(502, text="<html>Bad Gateway</html>"),
]


@pytest.mark.parametrize("answer", OUTAGES)
def test_with_a_default_an_outage_answer_returns_the_default(answer: httpx.Response) -> None:
    client, _ = make(answer)
    sentinel = object()
    assert client.get("tweets", default=sentinel) is sentinel
    assert client.value("tweets", default=sentinel) is sentinel
    assert client.raw("tweets", default=sentinel) is sentinel


def test_with_a_default_an_unreachable_service_returns_the_default() -> None:
    client, _ = make(refuse, circuit_failures=0)
    assert client.get("tweets", default=None) is None
    assert client.value("tweets", default=[]) == []
    assert client.raw("tweets", default="") == ""


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("bad_args", 400, BadArgs),
        ("unknown_job", 404, UnknownJob),
        ("unauthorized", 401, Unauthorized),
        ("forbidden", 403, Forbidden),
    ],
)
def test_a_4xx_raises_even_with_a_default(code: str, status: int, cls: type[ServiceError]) -> None:
    client, _ = make(error(status, code, "a bug"))
    for read in (client.get, client.value, client.raw):
        with pytest.raises(cls):
            read("tweets", default=None)


def test_without_a_default_an_outage_raises() -> None:
    client, _ = make(error(503, "store_unavailable", "the store is down"))
    with pytest.raises(StoreUnavailable) as raised:
        client.value("tweets")
    assert raised.value.outage


def test_get_returns_a_pending_answer_even_with_a_default() -> None:
    pending = {"job": "slow", "key": "rfd:slow:v1:", "status": "pending"}
    client, _ = make(httpx.Response(202, json=pending))
    assert client.get("slow", default=None) == pending


# -- value ----------------------------------------------------------------------------------


def test_value_returns_the_parsed_json_the_text_or_the_bytes() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    assert client.value("tweets", username="bob") == [{"id": 1, "text": "hello"}]
    assert raw_path(recorder.only) == b"/v1/jobs/tweets"
    recorder.answer = httpx.Response(200, json={**HIT, "content_type": "text/html", "value": "<b>"})
    assert client.value("tweets") == "<b>"
    data = bytes(range(256))
    b64 = base64.b64encode(data).decode()
    answer = {k: v for k, v in HIT.items() if k != "value"}
    recorder.answer = httpx.Response(200, json={**answer, "value_b64": b64})
    assert client.value("tweets") == data


def test_value_of_a_pending_job_raises_pending_or_returns_the_default() -> None:
    pending = {"job": "slow", "key": "rfd:slow:v1:n=1", "status": "pending"}
    client, _ = make(httpx.Response(202, json=pending))
    with pytest.raises(Pending) as raised:
        client.value("slow", n=1)
    assert (raised.value.job, raised.value.key) == ("slow", "rfd:slow:v1:n=1")
    assert isinstance(raised.value, RefresherdClientError)
    assert client.value("slow", n=1, default="soon") == "soon"


@pytest.mark.parametrize(
    ("content_type", "value"),
    [
        ("text/html", "<p>"),
        ("text/plain; charset=utf-8", "<p>"),
        ("application/xml", "<p>"),
        ("application/atom+xml", "<p>"),
        ("application/x-thing; charset=utf-8", "<p>"),
        ("application/octet-stream", b"<p>"),
        ("image/svg", b"<p>"),
    ],
)
def test_answer_value_of_text_is_text_and_of_other_types_bytes(
    content_type: str, value: str | bytes
) -> None:
    assert answer_value({"status": "hit", "content_type": content_type, "value": "<p>"}) == value


def test_answer_value_without_a_value_is_a_bad_response() -> None:
    with pytest.raises(BadResponse):
        answer_value({"status": "hit"})
    with pytest.raises(BadResponse):
        answer_value({"status": "hit", "value_b64": "not base64!"})


# -- raw ------------------------------------------------------------------------------------


def test_raw_gets_the_stored_body_with_its_headers() -> None:
    snippet = "<p>café</p>".encode()
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "ETag": 'W/"abc"',
        "Cache-Status": "refresherd; hit; ttl=840",
    }
    client, recorder = make(httpx.Response(200, content=snippet, headers=headers))
    raw = client.raw("sidebar", user_id=42)
    request = recorder.only
    assert (request.method, raw_path(request)) == ("GET", b"/v1/jobs/sidebar/raw")
    assert query(request) == {"user_id": ["42"]}
    assert request.headers["Accept"] == "*/*"
    assert raw == Raw(
        body=snippet,
        content_type="text/html; charset=utf-8",
        status=200,
        etag='W/"abc"',
        cache_status="refresherd; hit; ttl=840",
    )
    assert raw.text == "<p>café</p>" and not raw.pending


def test_raw_text_decodes_with_the_charset_of_its_content_type() -> None:
    assert Raw("é".encode("latin-1"), 'text/html; charset="ISO-8859-1"').text == "é"
    assert Raw(b"\xff", "text/html").text == "\ufffd"
    assert Raw("é".encode(), "text/html; charset=nonsense").text == "é"


def test_raw_of_a_pending_job_is_a_202_raw_or_the_default() -> None:
    pending = {"job": "sidebar", "key": "rfd:sidebar:v1:user_id=1", "status": "pending"}
    client, _ = make(httpx.Response(202, json=pending))
    raw = client.raw("sidebar", user_id=1)
    assert raw.pending and raw.status == 202 and json.loads(raw.body) == pending
    assert client.raw("sidebar", user_id=1, default=None) is None


# -- get_many -------------------------------------------------------------------------------


def test_get_many_posts_every_item_and_returns_answers_and_errors_in_order() -> None:
    answers = {
        "items": [
            HIT,
            {"error": {"code": "unknown_job", "message": "no job 'nope'"}},
            {"error": {"code": "fetch_failed", "message": "origin answered 500"}},
        ]
    }
    client, recorder = make(httpx.Response(200, json=answers))
    results = client.get_many(
        [("tweets", {"username": "bob"}), {"job": "nope", "args": {}}, "broken"]
    )
    request = recorder.only
    assert (request.method, request.url.port, raw_path(request)) == ("POST", 8080, b"/v1/fetch")
    assert json.loads(request.content) == {
        "items": [
            {"job": "tweets", "args": {"username": "bob"}},
            {"job": "nope", "args": {}},
            {"job": "broken", "args": {}},
        ]
    }
    first, second, third = results
    assert first == HIT
    assert isinstance(second, UnknownJob) and (second.status, second.code) == (404, "unknown_job")
    assert isinstance(third, FetchFailed) and third.status == 502 and third.outage


def test_get_many_with_a_default_replaces_outages_but_not_mistakes() -> None:
    answers = {
        "items": [
            {"error": {"code": "bad_args", "message": "missing n"}},
            {"error": {"code": "wait_timeout", "message": "slow"}},
        ]
    }
    client, _ = make(httpx.Response(200, json=answers))
    mistake, outage = client.get_many([("a", {}), ("b", {})], default=None)
    assert isinstance(mistake, BadArgs)
    assert outage is None


def test_get_many_with_a_default_on_an_unreachable_service_gives_one_per_item() -> None:
    client, _ = make(refuse)
    assert client.get_many([("a", {}), ("b", {})], default="-") == ["-", "-"]
    with pytest.raises(Unreachable):
        client.get_many([("a", {})])


def test_get_many_raises_an_error_of_the_whole_batch_that_is_a_mistake() -> None:
    client, _ = make(error(413, "batch_too_large", "at most 100"))
    with pytest.raises(BatchTooLarge):
        client.get_many([("a", {})] * 101, default=None)


def test_get_many_of_nothing_sends_nothing() -> None:
    client, recorder = make(httpx.Response(200, json={"items": []}))
    assert client.get_many([]) == []
    assert recorder.requests == []


def test_get_many_with_an_answer_of_the_wrong_length_is_a_bad_response() -> None:
    client, _ = make(httpx.Response(200, json={"items": [HIT]}))
    with pytest.raises(BadResponse):
        client.get_many([("a", {}), ("b", {})])


@pytest.mark.parametrize("item", [42, ("a",), {"job": "a", "arg": {}}, {"args": {}}, (1, {})])
def test_get_many_refuses_an_item_of_another_shape(item: object) -> None:
    client, recorder = make(httpx.Response(200, json={"items": []}))
    with pytest.raises(TypeError):
        client.get_many([item])  # type: ignore[list-item]
    assert recorder.requests == []


# -- put ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "sent", "sent_type"),
    [
        (b"\x89PNG", None, b"\x89PNG", "application/octet-stream"),
        (b"<p>", "text/html; charset=utf-8", b"<p>", "text/html; charset=utf-8"),
        ("Grüße", None, "Grüße".encode(), "text/plain; charset=utf-8"),
        ({"a": [1, "é"]}, None, '{"a": [1, "é"]}'.encode(), "application/json"),
        ([1, 2], "application/vnd.x+json", b"[1, 2]", "application/vnd.x+json"),
    ],
)
def test_put_sends_the_body_with_its_content_type_to_the_public_listener(
    body: object, content_type: str | None, sent: bytes, sent_type: str
) -> None:
    client, recorder = make(httpx.Response(200, json=HIT), token=TOKEN)
    assert client.put("motd", body, {"lang": "de"}, content_type=content_type) == HIT
    request = recorder.only
    assert (request.method, request.url.port, raw_path(request)) == ("PUT", 8080, b"/v1/jobs/motd")
    assert query(request) == {"lang": ["de"]}
    assert request.content == sent
    assert request.headers["Content-Type"] == sent_type
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_put_refuses_a_value_that_is_not_json_before_any_request() -> None:
    client, recorder = make(httpx.Response(200, json=HIT))
    with pytest.raises(TypeError):
        client.put("motd", object())
    with pytest.raises(TypeError):
        client.put("motd", float("nan"))
    with pytest.raises(ValueError):
        client.put("motd", b"x", content_type="text/plain\r\nX-Evil: 1")
    assert recorder.requests == []


def test_put_raises_the_services_errors() -> None:
    client, _ = make(error(403, "forbidden", "a read token may not PUT"))
    with pytest.raises(Forbidden):
        client.put("motd", "hi")


def test_refresh_takes_a_mapping_of_arguments_too() -> None:
    pending = {"job": "r", "key": "rfd:r:v1:job=x", "status": "pending"}
    client, recorder = make(httpx.Response(202, json=pending))
    client.refresh("r", {"job": "x"})
    assert query(recorder.only) == {"job": ["x"]}


# -- circuit breaker ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """A transport handler that refuses connections while C{down}."""

    def __init__(self) -> None:
        self.down = True
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down:
            refuse(request)
        return httpx.Response(200, json=HIT)


def breaking(**kwargs: Any) -> tuple[Client, Flaky, FakeClock]:
    clock = FakeClock()
    flaky = Flaky()
    client = Client(transport=httpx.MockTransport(flaky), clock=clock, **kwargs)
    return client, flaky, clock


def test_after_three_failures_the_circuit_opens_and_fails_at_once_without_a_request() -> None:
    client, flaky, _ = breaking()
    for _ in range(3):
        with pytest.raises(Unreachable) as raised:
            client.get("tweets")
        assert not isinstance(raised.value, CircuitOpen)
    assert flaky.requests == 3 and client.circuit() == "open"
    with pytest.raises(CircuitOpen) as opened:
        client.get("tweets")
    assert isinstance(opened.value, Unreachable)
    assert "circuit open" in opened.value.message
    assert opened.value.message.startswith("cannot reach http://127.0.0.1:8080: ")
    assert client.get("tweets", default="fallback") == "fallback"
    assert flaky.requests == 3


def test_after_the_cooldown_one_trial_request_closes_the_circuit() -> None:
    client, flaky, clock = breaking(circuit_cooldown=5.0)
    for _ in range(3):
        client.get("tweets", default=None)
    clock.now += 4.9
    assert client.get("tweets", default=None) is None
    assert flaky.requests == 3
    clock.now += 0.1
    flaky.down = False
    assert client.get("tweets") == HIT
    assert flaky.requests == 4 and client.circuit() == "closed"
    # Closed again: a new failure counts from zero.
    flaky.down = True
    client.get("tweets", default=None)
    client.get("tweets", default=None)
    assert client.circuit() == "closed"


def test_a_failed_trial_opens_the_circuit_for_another_cooldown() -> None:
    client, flaky, clock = breaking(circuit_failures=2, circuit_cooldown=10.0)
    client.get("tweets", default=None)
    client.get("tweets", default=None)
    clock.now += 10
    with pytest.raises(Unreachable):
        client.get("tweets")
    assert flaky.requests == 3 and client.circuit() == "open"
    clock.now += 9.9
    with pytest.raises(CircuitOpen):
        client.get("tweets")
    assert flaky.requests == 3


def test_an_error_answer_counts_as_reaching_the_service() -> None:
    answers = iter([refuse, refuse, lambda r: error(503, "overloaded", "busy")] + [refuse] * 2)

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)(request)

    client = Client(transport=httpx.MockTransport(handler))
    for _ in range(2):
        client.get("tweets", default=None)
    assert client.get("tweets", default="busy") == "busy"
    for _ in range(2):
        client.get("tweets", default=None)
    assert client.circuit() == "closed"


def test_each_listener_has_its_own_circuit() -> None:
    client, flaky, _ = breaking()
    for _ in range(3):
        client.get("tweets", default=None)
    assert (client.circuit("public"), client.circuit("admin")) == ("open", "closed")
    # The admin listener is still tried, and answers.
    flaky.down = False
    assert client.inspect("rfd:tweets:v1:") == HIT
    assert flaky.requests == 4
    with pytest.raises(CircuitOpen):
        client.get("tweets")


def test_a_circuit_failure_count_of_0_never_opens() -> None:
    client, flaky, _ = breaking(circuit_failures=0)
    for _ in range(10):
        client.get("tweets", default=None)
    assert flaky.requests == 10 and client.circuit() == "closed"


def test_while_a_trial_request_runs_other_threads_fail_at_once() -> None:
    started = threading.Event()
    release = threading.Event()
    clock = FakeClock()
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 3:
            refuse(request)
        started.set()
        assert release.wait(10)
        return httpx.Response(200, json=HIT)

    client = Client(transport=httpx.MockTransport(handler), clock=clock)
    for _ in range(3):
        client.get("tweets", default=None)
    clock.now += 5
    results: list[object] = []
    trial = threading.Thread(target=lambda: results.append(client.get("tweets")))
    trial.start()
    assert started.wait(10)
    assert client.circuit() == "half-open"
    with pytest.raises(CircuitOpen, match="trial"):
        client.get("tweets")
    release.set()
    trial.join(10)
    assert results == [HIT] and calls["n"] == 4 and client.circuit() == "closed"


def test_the_circuit_opening_and_closing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    client, flaky, clock = breaking()
    caplog.set_level(logging.INFO, logger="refresherd.client")
    for _ in range(4):
        client.get("tweets", default=None)
    clock.now += 5
    flaky.down = False
    client.get("tweets")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        (
            "WARNING",
            "refresherd at http://127.0.0.1:8080 could not be reached 3 times in a row; "
            "failing at once for 5 s",
        ),
        ("INFO", "refresherd at http://127.0.0.1:8080 answers again"),
    ]


def test_a_request_that_ends_in_a_bug_lets_another_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, cooldown=1.0, clock=clock)
    assert breaker.check() is None
    assert breaker.failed() is True
    assert breaker.check() is not None
    clock.now += 1
    assert breaker.check() is None and breaker.state == "half-open"
    breaker.abandoned()
    assert breaker.check() is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"failures": -1}, ValueError), ({"failures": 1.5}, TypeError), ({"cooldown": 0}, ValueError)],
)
def test_a_breaker_with_bad_settings_is_refused(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        CircuitBreaker(**kwargs)


def test_a_connect_timeout_of_its_own_is_named_in_the_message() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    client, _ = make(fail, timeout=10, connect_timeout=0.5)
    with pytest.raises(Unreachable) as raised:
        client.get("tweets")
    assert raised.value.message == "cannot reach http://127.0.0.1:8080: no connection within 0.5 s"
    with pytest.raises(ValueError, match="connect timeout"):
        Client(connect_timeout=0)
