"""
C{refresherctl} (L{refresherd.ctl}): every command and option, where options
may stand, environment defaults, human and C{--json} output, exit statuses and
the one line on stderr, run through L{run} with its streams and an
C{httpx.MockTransport} that answers as refresherd would.  No network.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from refresherd import ctl as ctl_module
from refresherd.ctl import main, run

TOKEN = "s3cr3t-admin-t0ken"

ENTRY_KEY = "rfd:tweets:v1:username=bob"

JOBS = [
    {
        "name": "report",
        "fetch": "python",
        "args": ["year"],
        "callable": "myproject.reports:build_report",
        "fresh": 3600.0,
        "stale": 0.5,
        "tags": [],
    },
    {
        "name": "tweets",
        "fetch": "http",
        "args": ["username"],
        "url": "https://api.example.com/users/{username}/tweets",
        "fresh": 900.0,
        "stale": 86400.0,
        "tags": ["user:{username}", "tweets"],
    },
]


HOT = {
    "tweets": [
        {
            "key": "rfd:tweets:v1:username=bob",
            "args": {"username": "bob"},
            "rate": 12.25,
            "error": 0,
        },
        {
            "key": "rfd:tweets:v1:username=al",
            "args": {"username": "al"},
            "rate": 0.0116,
            "error": 0,
        },
    ],
    "report": [],
}


def answer(job: str, key: str, content_type: str, **value: Any) -> dict[str, Any]:
    """A job GET answer as the public API renders it."""
    return {
        "job": job,
        "key": key,
        "status": "hit",
        "content_type": content_type,
        "fetched_at": 1700000000.0,
        "fresh_until": 1700000900.0,
        "stale_until": 1700087300.0,
        "age": 12.5,
        **value,
    }


class FakeRefresherd:
    """
    A MockTransport handler answering like refresherd's two listeners, by
    path; it keeps every request.  C{answer}, when set, is the answer to
    every request instead.
    """

    def __init__(
        self, answer: httpx.Response | Callable[[httpx.Request], httpx.Response] | None = None
    ) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if isinstance(self.answer, httpx.Response):
            return self.answer
        if self.answer is not None:
            return self.answer(request)
        return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.partition(b"?")[0].decode("ascii")
        args = {name: values[0] for name, values in query(request).items()}
        if request.method == "POST" and path == "/v1/purge":
            body = json.loads(request.content)
            return httpx.Response(
                200, json={"purged": len(body["keys"]) + len(body["jobs"]) + len(body["tags"])}
            )
        if request.method == "GET" and path == "/v1/jobs":
            return httpx.Response(200, json={"jobs": JOBS})
        if request.method == "GET" and path == "/v1/hot":
            if args.get("job", "tweets") not in ("tweets", "report"):
                return error(404, "unknown_job", f"no job named {args['job']!r}")
            n = int(args.get("n", "100"))
            hot = {name: keys[:n] for name, keys in HOT.items() if args.get("job", name) == name}
            return httpx.Response(200, json={"jobs": hot})
        if request.method == "GET" and path.startswith("/v1/entries/"):
            key = unquote(path[len("/v1/entries/") :])
            entry: dict[str, Any] = {
                "key": key,
                "job": "tweets",
                "args": {"username": "bob"},
                "fetched_at": 1700000000.0,
                "fresh_until": 1700000900.0,
                "stale_until": 1700087300.0,
                "size": 27,
                "content_type": "application/json",
                "tags": ["user:bob"],
                "last_error": None,
                "failures": 0,
            }
            if args.get("value") == "1":
                entry["value"] = [{"id": 1}]
            return httpx.Response(200, json=entry)
        if request.method == "POST" and path.endswith("/warm"):
            job = path.split("/")[3]
            return httpx.Response(
                200,
                json={
                    "job": job,
                    "results": [
                        warm_result(job, args) for args in json.loads(request.content)["args"]
                    ],
                },
            )
        if request.method == "POST" and path.endswith("/refresh"):
            job = path.split("/")[3]
            key = f"rfd:{job}:v1:" + "&".join(f"{k}={v}" for k, v in sorted(args.items()))
            return httpx.Response(202, json={"job": job, "key": key, "status": "pending"})
        if request.method == "GET" and path == "/v1/jobs/tweets":
            key = f"rfd:tweets:v1:username={args.get('username')}"
            value = [{"id": 1, "text": "héllo"}]
            return httpx.Response(200, json=answer("tweets", key, "application/json", value=value))
        if request.method == "GET" and path.startswith("/v1/jobs/"):
            job = path.split("/")[3]
            return error(404, "unknown_job", f"no job named {job!r}")
        return error(404, "not_found", f"no route {path!r}")

    @property
    def only(self) -> httpx.Request:
        assert len(self.requests) == 1
        return self.requests[0]


def warm_result(job: str, args: dict[str, Any]) -> dict[str, Any]:
    """What the fake service answers for one argument set: by its C{name}."""
    key = f"rfd:{job}:v1:" + "&".join(f"{k}={v}" for k, v in sorted(args.items()))
    name = str(args.get("name", ""))
    if name.startswith("bad"):
        return {
            "key": key,
            "result": "failed",
            "code": "fetch_failed",
            "error": "origin answered 503",
        }
    if name.startswith("fresh"):
        return {"key": key, "result": "fresh"}
    if name.startswith("nostore"):
        return {"key": key, "result": "not_stored"}
    return {"key": key, "result": "done"}


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def query(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.url.query.decode("ascii"), keep_blank_values=True)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


@dataclass
class Result:
    code: int
    out: str
    err: str


def ctl(
    argv: list[str],
    fake: FakeRefresherd | None = None,
    environ: Mapping[str, str] | None = None,
    stdin: str = "",
    stdout: io.StringIO | None = None,
) -> Result:
    stdout, stderr = stdout or io.StringIO(), io.StringIO()
    transport = httpx.MockTransport(fake if fake is not None else FakeRefresherd())
    code = run(
        argv,
        stdout=stdout,
        stderr=stderr,
        environ=environ or {},
        transport=transport,
        stdin=io.StringIO(stdin),
    )
    return Result(code, stdout.getvalue(), stderr.getvalue())


def assert_one_error_line(result: Result, line: str) -> None:
    assert result.code == 1
    assert result.out == ""
    assert result.err == line + "\n"
    assert "Traceback" not in result.err


# -- purge ----------------------------------------------------------------------------------


def test_purge_keys_posts_them_and_prints_the_count() -> None:
    fake = FakeRefresherd()
    result = ctl(["purge", "k1", "k2"], fake)
    assert (result.code, result.out, result.err) == (0, "purged 2\n", "")
    request = fake.only
    assert (request.method, request.url.port, request.url.path) == ("POST", 8081, "/v1/purge")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "keys": ["k1", "k2"],
        "jobs": [],
        "tags": [],
        "soft": False,
    }


def test_purge_by_repeated_tags_and_jobs_combined_with_keys_and_soft() -> None:
    fake = FakeRefresherd()
    argv = ["purge", "--tag", "user:bob", "k1", "--tag", "t2", "--job", "tweets", "--soft"]
    result = ctl(argv, fake)
    assert (result.code, result.out) == (0, "purged 4\n")
    assert json.loads(fake.only.content) == {
        "keys": ["k1"],
        "jobs": ["tweets"],
        "tags": ["user:bob", "t2"],
        "soft": True,
    }


def test_purge_json_prints_the_purged_object() -> None:
    result = ctl(["purge", "--job", "tweets", "--json"])
    assert result.code == 0
    assert result.out == json.dumps({"purged": 1}, indent=2) + "\n"


def test_purge_with_nothing_to_purge_is_a_usage_error_and_sends_nothing() -> None:
    fake = FakeRefresherd()
    result = ctl(["purge", "--soft"], fake)
    assert result.code == 2
    assert result.out == ""
    assert "Usage: refresherctl purge" in result.err
    assert "Error: nothing to purge" in result.err
    assert fake.requests == []


# -- get ------------------------------------------------------------------------------------


def test_get_asks_the_public_listener_and_prints_only_the_json_value_indented() -> None:
    fake = FakeRefresherd()
    result = ctl(["get", "tweets", "username=bob"], fake)
    assert result.code == 0
    value = [{"id": 1, "text": "héllo"}]
    assert result.out == json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    assert result.err == ""
    request = fake.only
    assert (request.method, request.url.port, request.url.path) == ("GET", 8080, "/v1/jobs/tweets")
    assert query(request) == {"username": ["bob"]}


def test_get_passes_values_with_equals_signs_and_spaces_intact() -> None:
    fake = FakeRefresherd(httpx.Response(200, json=answer("s", "k", "text/plain", value="x")))
    assert ctl(["get", "search", "q=a=b c+d", "empty="], fake).code == 0
    assert query(fake.only) == {"q": ["a=b c+d"], "empty": [""]}


@pytest.mark.parametrize("command", ["get", "refresh"])
def test_an_argument_named_like_a_client_parameter_is_sent_as_an_argument(command: str) -> None:
    """C{default=x} is the job's argument C{default}, not the client's fallback."""
    fake = FakeRefresherd()
    assert ctl([command, "tweets", "default=x", "args=y"], fake).code == 0
    assert query(fake.only) == {"default": ["x"], "args": ["y"]}


def test_get_prints_a_text_value_as_is() -> None:
    text = "<p>hello</p>\n<p>world</p>"
    fake = FakeRefresherd(httpx.Response(200, json=answer("s", "k", "text/html", value=text)))
    result = ctl(["get", "snippet"], fake)
    assert (result.code, result.out, result.err) == (0, text, "")


def test_get_prints_a_json_string_value_as_json() -> None:
    fake = FakeRefresherd(
        httpx.Response(200, json=answer("s", "k", "application/problem+json", value="hi"))
    )
    assert ctl(["get", "s"], fake).out == '"hi"\n'


def test_get_writes_a_binary_value_as_bytes_to_the_stdout_buffer() -> None:
    data = bytes(range(256))
    b64 = base64.b64encode(data).decode("ascii")
    fake = FakeRefresherd(httpx.Response(200, json=answer("img", "k", "image/png", value_b64=b64)))
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8")
    stderr = io.StringIO()
    code = run(
        ["get", "img"],
        stdout=stdout,
        stderr=stderr,
        environ={},
        transport=httpx.MockTransport(fake),
    )
    stdout.flush()
    assert code == 0
    assert raw.getvalue() == data
    assert stderr.getvalue() == ""


def test_get_of_a_binary_value_to_a_text_only_stream_fails_with_one_line() -> None:
    b64 = base64.b64encode(b"\xff\xd8\xff").decode("ascii")
    fake = FakeRefresherd(httpx.Response(200, json=answer("img", "k", "image/jpeg", value_b64=b64)))
    result = ctl(["get", "img"], fake)
    assert_one_error_line(
        result,
        "refresherctl: the value is binary (3 bytes) and stdout takes only text; use --json",
    )


def test_get_of_a_pending_value_prints_nothing_on_stdout_and_a_note_on_stderr() -> None:
    pending = {"job": "slow", "key": "rfd:slow:v1:id=1", "status": "pending"}
    result = ctl(["get", "slow", "id=1"], FakeRefresherd(httpx.Response(202, json=pending)))
    assert (result.code, result.out) == (0, "")
    assert result.err == (
        "refresherctl: pending: no value yet for rfd:slow:v1:id=1; it is being fetched\n"
    )


def test_get_of_a_stale_value_with_an_error_warns_on_stderr_only() -> None:
    stale = answer("s", "k", "text/plain", value="old") | {
        "status": "stale",
        "error": "origin answered 500",
    }
    result = ctl(["get", "s"], FakeRefresherd(httpx.Response(200, json=stale)))
    assert (result.code, result.out) == (0, "old")
    assert result.err == "refresherctl: warning: a stale value is served: origin answered 500\n"


def test_get_json_prints_the_whole_answer() -> None:
    result = ctl(["get", "tweets", "username=bob", "--json"])
    assert result.code == 0
    document = json.loads(result.out)
    assert document["status"] == "hit" and document["key"] == ENTRY_KEY
    assert result.out == json.dumps(document, indent=2) + "\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "tweets", "novalue"], "Error: expected ARG=VALUE, got 'novalue'"),
        (["get", "tweets", "=bob"], "Error: expected ARG=VALUE, got '=bob'"),
        (["get", "tweets", "a=1", "a=2"], "Error: argument 'a' is given more than once"),
        (["get"], "Error: Missing argument 'JOB'."),
        (["refresh", "tweets", "novalue"], "Error: expected ARG=VALUE, got 'novalue'"),
        (["refresh"], "Error: Missing argument 'JOB'."),
        (["inspect"], "Error: Missing argument 'KEY'."),
        ([], "Error: Missing command."),
        (["--json"], "Error: Missing command."),
        (["frobnicate"], "Error: No such command 'frobnicate'."),
        (["jobs", "--frob"], "Error: No such option"),
        (["jobs", "extra"], "Error: Got unexpected extra argument (extra)"),
        (["--timeout", "0", "jobs"], "Error: Invalid value for '--timeout'"),
        (["jobs", "--timeout", "soon"], "Error: Invalid value for '--timeout'"),
        (["--url", "127.0.0.1:8081", "jobs"], "Error: --url: not an http:// or https:// URL"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_on_stderr_and_send_nothing(
    argv: list[str], message: str
) -> None:
    fake = FakeRefresherd()
    result = ctl(argv, fake)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith("Usage: refresherctl")
    assert "--help' for help." in result.err
    assert message in result.err
    assert "Traceback" not in result.err
    assert fake.requests == []


def test_a_bad_url_from_the_environment_is_a_usage_error_naming_the_variable() -> None:
    result = ctl(["get", "tweets"], environ={"REFRESHERD_URL": "ftp://cache"})
    assert result.code == 2
    assert "Error: $REFRESHERD_URL: not an http:// or https:// URL with a host" in result.err


# -- inspect --------------------------------------------------------------------------------


def test_inspect_prints_aligned_field_value_lines() -> None:
    fake = FakeRefresherd()
    result = ctl(["inspect", ENTRY_KEY], fake)
    assert result.code == 0
    assert result.out.splitlines() == [
        f"key           {ENTRY_KEY}",
        "job           tweets",
        'args          {"username": "bob"}',
        "fetched_at    1700000000 (2023-11-14T22:13:20Z)",
        "fresh_until   1700000900 (2023-11-14T22:28:20Z)",
        "stale_until   1700087300 (2023-11-15T22:28:20Z)",
        "size          27",
        "content_type  application/json",
        'tags          ["user:bob"]',
        "last_error    -",
        "failures      0",
    ]
    assert (fake.only.method, fake.only.url.port) == ("GET", 8081)


def test_inspect_percent_encodes_the_key_once_on_the_wire() -> None:
    fake = FakeRefresherd()
    result = ctl(["inspect", "rfd:s:v1:q=caf%C3%A9"], fake)
    assert result.code == 0
    assert fake.only.url.raw_path == b"/v1/entries/rfd%3As%3Av1%3Aq%3Dcaf%25C3%25A9"
    assert result.out.splitlines()[0] == "key           rfd:s:v1:q=caf%C3%A9"


def test_inspect_value_asks_for_the_value_and_prints_it_on_one_line() -> None:
    fake = FakeRefresherd()
    result = ctl(["inspect", "--value", ENTRY_KEY], fake)
    assert query(fake.only) == {"value": ["1"]}
    assert result.out.splitlines()[-1] == 'value         [{"id": 1}]'


def test_inspect_shows_a_multi_line_string_quoted_on_one_line() -> None:
    entry = {"key": "k", "last_error": "boom\nbang", "value": ""}
    result = ctl(["inspect", "k"], FakeRefresherd(httpx.Response(200, json=entry)))
    assert result.out == 'key         k\nlast_error  "boom\\nbang"\nvalue       ""\n'


def test_inspect_shows_a_zero_time_without_a_date() -> None:
    entry = {"key": "k", "retry_at": 0, "error_until": 1700000000.5}
    result = ctl(["inspect", "k"], FakeRefresherd(httpx.Response(200, json=entry)))
    assert result.out.splitlines() == [
        "key          k",
        "retry_at     0",
        "error_until  1700000000.5 (2023-11-14T22:13:20Z)",
    ]


def test_inspect_json_prints_the_entry() -> None:
    result = ctl(["inspect", ENTRY_KEY, "--json"])
    entry = json.loads(result.out)
    assert entry["key"] == ENTRY_KEY and entry["size"] == 27
    assert result.out == json.dumps(entry, indent=2) + "\n"


def test_inspect_of_an_absent_key_exits_1_with_the_server_error() -> None:
    fake = FakeRefresherd(error(404, "not_found", "no entry 'k'"))
    assert_one_error_line(ctl(["inspect", "k"], fake), "refresherctl: not_found: no entry 'k'")


# -- refresh --------------------------------------------------------------------------------


def test_refresh_posts_an_empty_json_object_and_prints_the_key() -> None:
    fake = FakeRefresherd()
    result = ctl(["refresh", "tweets", "username=bob"], fake)
    assert (result.code, result.out, result.err) == (0, f"refreshing {ENTRY_KEY}\n", "")
    request = fake.only
    assert (request.method, request.url.port) == ("POST", 8081)
    assert request.url.path == "/v1/jobs/tweets/refresh"
    assert query(request) == {"username": ["bob"]}
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == b"{}"


def test_refresh_json_prints_the_pending_answer() -> None:
    result = ctl(["--json", "refresh", "tweets", "username=bob"])
    assert json.loads(result.out) == {"job": "tweets", "key": ENTRY_KEY, "status": "pending"}


# -- jobs -----------------------------------------------------------------------------------


def test_jobs_prints_an_aligned_table_with_durations_in_seconds() -> None:
    fake = FakeRefresherd()
    result = ctl(["jobs"], fake)
    assert result.code == 0
    assert result.out.splitlines() == [
        "NAME    FETCH   ARGS      FRESH  STALE  TAGS",
        "report  python  year      3600   0.5    -",
        "tweets  http    username  900    86400  user:{username},tweets",
    ]
    assert (fake.only.method, fake.only.url.port, fake.only.url.path) == ("GET", 8081, "/v1/jobs")


def test_jobs_with_no_job_configured_prints_the_header_only() -> None:
    result = ctl(["jobs"], FakeRefresherd(httpx.Response(200, json={"jobs": []})))
    assert (result.code, result.out) == (0, "NAME  FETCH  ARGS  FRESH  STALE  TAGS\n")


def test_jobs_json_prints_the_list() -> None:
    result = ctl(["jobs", "--json"])
    assert result.out == json.dumps(JOBS, indent=2) + "\n"


# -- hot ------------------------------------------------------------------------------------


def test_hot_prints_each_jobs_keys_with_their_rates() -> None:
    fake = FakeRefresherd()
    result = ctl(["hot"], fake)
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "JOB     KEY                         RATE",
        "tweets  rfd:tweets:v1:username=bob  12.250",
        "tweets  rfd:tweets:v1:username=al   0.012",
    ]
    request = fake.only
    assert (request.method, request.url.port, request.url.path) == ("GET", 8081, "/v1/hot")
    assert query(request) == {}


def test_hot_of_one_job_at_most_n_keys() -> None:
    fake = FakeRefresherd()
    result = ctl(["hot", "tweets", "-n", "1"], fake)
    assert result.out.splitlines()[1:] == ["tweets  rfd:tweets:v1:username=bob  12.250"]
    assert query(fake.only) == {"job": ["tweets"], "n": ["1"]}


def test_hot_json_prints_the_answer() -> None:
    result = ctl(["hot", "report", "--json"])
    assert json.loads(result.out) == {"jobs": {"report": []}}


def test_hot_of_an_unknown_job_and_a_bad_n() -> None:
    assert_one_error_line(ctl(["hot", "nope"]), "refresherctl: unknown_job: no job named 'nope'")
    result = ctl(["hot", "-n", "0"])
    assert result.code == 2
    assert "Invalid value for '-n'" in result.err


# -- where options stand, defaults, environment -----------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--url", "http://admin.test:9", "--token", TOKEN, "purge", "k1"],
        ["purge", "k1", "--json", "--url", "http://admin.test:9", "--token", TOKEN],
        ["--url", "http://admin.test:9", "purge", "--json", "k1", "--token", TOKEN],
        ["--token", TOKEN, "purge", "--url=http://admin.test:9", "k1", "--json"],
    ],
)
def test_common_options_may_stand_before_or_after_the_command(argv: list[str]) -> None:
    fake = FakeRefresherd()
    result = ctl(argv, fake)
    assert (result.code, result.out) == (0, '{\n  "purged": 1\n}\n')
    assert str(fake.only.url) == "http://admin.test:9/v1/purge"
    assert fake.only.headers["Authorization"] == f"Bearer {TOKEN}"


def test_an_option_after_the_command_wins_over_the_same_before_it() -> None:
    fake = FakeRefresherd()
    argv = ["--url", "http://before:1", "--token", "before-token", "jobs"]
    ctl([*argv, "--url", "http://after:2", "--token", "after-token"], fake)
    assert fake.only.url.host == "after" and fake.only.url.port == 2
    assert fake.only.headers["Authorization"] == "Bearer after-token"


def test_public_url_is_used_by_get_and_url_by_admin_commands() -> None:
    fake = FakeRefresherd()
    urls = ["--public-url", "http://public.test:80/rfd", "--url", "http://admin.test:81"]
    ctl([*urls, "get", "tweets", "username=bob"], fake)
    ctl([*urls, "jobs"], fake)
    assert [str(r.url) for r in fake.requests] == [
        "http://public.test/rfd/v1/jobs/tweets?username=bob",
        "http://admin.test:81/v1/jobs",
    ]


def test_without_options_or_environment_the_loopback_defaults_are_used() -> None:
    fake = FakeRefresherd()
    ctl(["get", "tweets", "username=bob"], fake)
    ctl(["jobs"], fake)
    assert [(r.url.host, r.url.port) for r in fake.requests] == [
        ("127.0.0.1", 8080),
        ("127.0.0.1", 8081),
    ]
    assert all("Authorization" not in r.headers for r in fake.requests)


ENVIRON = {
    "REFRESHERD_URL": "http://public.env:7080",
    "REFRESHERD_ADMIN_URL": "http://admin.env:7081",
    "REFRESHERD_TOKEN": TOKEN,
}


def test_the_environment_gives_the_urls_and_the_token() -> None:
    fake = FakeRefresherd()
    ctl(["get", "tweets", "username=bob"], fake, environ=ENVIRON)
    ctl(["purge", "k1"], fake, environ=ENVIRON)
    assert [(r.url.host, r.url.port) for r in fake.requests] == [
        ("public.env", 7080),
        ("admin.env", 7081),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fake.requests)


def test_options_win_over_the_environment() -> None:
    fake = FakeRefresherd()
    argv = ["--url", "http://admin.opt:1", "--token", "option-token", "jobs"]
    ctl(argv, fake, environ=ENVIRON)
    assert (fake.only.url.host, fake.only.url.port) == ("admin.opt", 1)
    assert fake.only.headers["Authorization"] == "Bearer option-token"


def test_run_without_environ_reads_no_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFRESHERD_ADMIN_URL", "http://admin.env:7081")
    monkeypatch.setenv("REFRESHERD_TOKEN", TOKEN)
    fake = FakeRefresherd()
    stdout = io.StringIO()
    code = run(["jobs"], stdout=stdout, stderr=io.StringIO(), transport=httpx.MockTransport(fake))
    assert code == 0
    assert (fake.only.url.host, fake.only.url.port) == ("127.0.0.1", 8081)
    assert "Authorization" not in fake.only.headers


def test_timeout_is_applied_to_the_request() -> None:
    fake = FakeRefresherd()
    ctl(["jobs", "--timeout", "0.25"], fake)
    assert fake.only.extensions["timeout"] == {
        "connect": 0.25,
        "read": 0.25,
        "write": 0.25,
        "pool": 0.25,
    }


# -- warm -----------------------------------------------------------------------------------


def lines_of(*names: str) -> str:
    return "".join(json.dumps({"name": name}) + "\n" for name in names)


def test_warm_sends_one_argument_set_from_words_and_prints_the_summary() -> None:
    fake = FakeRefresherd()
    result = ctl(["warm", "user", "name=bob"], fake)
    assert (result.code, result.err) == (0, "")
    assert fake.only.url.path == "/v1/jobs/user/warm"
    assert json.loads(fake.only.content) == {"args": [{"name": "bob"}]}
    assert fake.only.headers["Content-Type"] == "application/json"
    assert result.out == "1/1: 1 done, 0 already fresh, 0 not stored, 0 failed\n" + (
        "1 done, 0 already fresh, 0 not stored, 0 failed\n"
    )


def test_warm_sends_a_file_in_batches_of_100_with_a_line_per_batch(tmp_path: Any) -> None:
    names = [f"fresh{i}" if i % 2 else f"u{i}" for i in range(250)]
    path = tmp_path / "args.jsonl"
    path.write_text("# users\n\n" + lines_of(*names), encoding="utf-8")
    fake = FakeRefresherd()
    result = ctl(["warm", "user", "--file", str(path)], fake)
    assert result.code == 0
    sent = [json.loads(r.content)["args"] for r in fake.requests]
    assert [len(batch) for batch in sent] == [100, 100, 50]
    assert [a["name"] for batch in sent for a in batch] == names
    assert result.out.splitlines() == [
        "100/250: 50 done, 50 already fresh, 0 not stored, 0 failed",
        "200/250: 100 done, 100 already fresh, 0 not stored, 0 failed",
        "250/250: 125 done, 125 already fresh, 0 not stored, 0 failed",
        "125 done, 125 already fresh, 0 not stored, 0 failed",
    ]


def test_warm_lists_at_most_20_failures_with_their_arguments_and_exits_1() -> None:
    names = [f"bad{i}" for i in range(25)] + ["ok", "nostore"]
    result = ctl(["warm", "user", "--file", "-"], stdin=lines_of(*names))
    assert result.code == 1
    out = result.out.splitlines()
    assert out[1] == "1 done, 0 already fresh, 1 not stored, 25 failed"
    assert out[2] == '  {"name": "bad0"}: fetch_failed: origin answered 503'
    assert len(out) == 2 + 20 + 1 and out[-1] == "  and 5 more failed"


def test_warm_json_prints_every_result() -> None:
    result = ctl(["warm", "user", "--json", "--file", "-"], stdin=lines_of("a", "fresh"))
    assert result.code == 0
    assert json.loads(result.out) == {
        "job": "user",
        "results": [
            {"key": "rfd:user:v1:name=a", "result": "done"},
            {"key": "rfd:user:v1:name=fresh", "result": "fresh"},
        ],
    }


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_warm_on_a_terminal_shows_a_progress_bar_instead_of_lines() -> None:
    terminal = Terminal()
    result = ctl(["warm", "user", "--file", "-"], stdin=lines_of("a", "b"), stdout=terminal)
    assert result.code == 0
    assert "warming user" in result.out and "100%" in result.out
    assert "2/2:" not in result.out
    assert result.out.endswith("2 done, 0 already fresh, 0 not stored, 0 failed\n")


def test_warm_interrupted_prints_the_summary_so_far_and_exits_130() -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return FakeRefresherd().route(request)

    names = ["bad"] + [f"u{i}" for i in range(149)]
    result = ctl(["warm", "user", "--file", "-"], FakeRefresherd(answer), stdin=lines_of(*names))
    assert result.code == 130
    assert result.out.splitlines()[-2:] == [
        "interrupted: 99 done, 0 already fresh, 0 not stored, 1 failed",
        '  {"name": "bad"}: fetch_failed: origin answered 503',
    ]


def test_warm_waits_longer_than_other_commands_unless_timeout_is_given() -> None:
    fake = FakeRefresherd()
    ctl(["warm", "user", "name=a"], fake)
    assert fake.only.extensions["timeout"]["read"] == 300
    fake = FakeRefresherd()
    ctl(["warm", "user", "name=a", "--timeout", "7"], fake)
    assert fake.only.extensions["timeout"]["read"] == 7


@pytest.mark.parametrize(
    ("stdin", "line"),
    [
        ('{"name": "a"}\n{"name": \n', "refresherctl: - line 2: not a JSON object: "),
        ('["a"]\n', "refresherctl: - line 1: not a JSON object of arguments"),
    ],
)
def test_warm_stops_at_a_bad_line_before_sending_anything(stdin: str, line: str) -> None:
    fake = FakeRefresherd()
    result = ctl(["warm", "user", "--file", "-"], fake, stdin=stdin)
    assert result.code == 1 and result.err.startswith(line) and fake.requests == []


def test_warm_with_words_and_a_file_is_a_usage_error() -> None:
    result = ctl(["warm", "user", "a=b", "--file", "-"])
    assert result.code == 2 and "not both" in result.err


def test_a_warm_the_service_refuses_exits_1_with_its_error() -> None:
    fake = FakeRefresherd(error(404, "unknown_job", "no job named 'x'"))
    assert_one_error_line(ctl(["warm", "x"], fake), "refresherctl: unknown_job: no job named 'x'")


# -- errors and exit statuses ---------------------------------------------------------------


def test_a_server_error_object_exits_1_with_its_code_and_message_on_one_line() -> None:
    assert_one_error_line(ctl(["get", "x"]), "refresherctl: unknown_job: no job named 'x'")


@pytest.mark.parametrize(
    ("response", "line"),
    [
        (
            error(401, "unauthorized", "a valid bearer token is required"),
            "refresherctl: unauthorized: a valid bearer token is required",
        ),
        (
            error(403, "forbidden", "a admin token may not do this"),
            "refresherctl: forbidden: a admin token may not do this",
        ),
        (
            error(503, "store_unavailable", "the store is down\nsince noon"),
            "refresherctl: store_unavailable: the store is down since noon",
        ),
        (
            httpx.Response(502, text="<html>\n<h1>Bad Gateway</h1>\n</html>"),
            "refresherctl: http_502: the service answered 502 Bad Gateway",
        ),
        (
            httpx.Response(200, text="not json"),
            "refresherctl: GET /v1/jobs answered 200 without a JSON object",
        ),
    ],
)
def test_service_errors_exit_1_with_one_line(response: httpx.Response, line: str) -> None:
    assert_one_error_line(ctl(["jobs"], FakeRefresherd(response)), line)


def test_an_unreachable_service_exits_1_naming_the_url() -> None:
    result = ctl(["purge", "k1"], FakeRefresherd(refuse))
    assert_one_error_line(
        result, "refresherctl: cannot reach http://127.0.0.1:8081: connection refused"
    )


def test_a_service_that_does_not_answer_in_time_exits_1() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    result = ctl(["get", "tweets", "--timeout", "2"], FakeRefresherd(hang))
    assert_one_error_line(result, "refresherctl: no answer from http://127.0.0.1:8080 within 2 s")


def test_version_exits_0_and_prints_it_on_stdout_without_asking_the_service() -> None:
    fake = FakeRefresherd()
    result = ctl(["--version"], fake)
    assert (result.code, result.out, result.err) == (0, "refresherctl 0.1.0\n", "")
    assert fake.requests == []


def test_help_exits_0_and_prints_on_stdout() -> None:
    top = ctl(["--help"])
    assert top.code == 0 and top.err == ""
    assert top.out.startswith("Usage: refresherctl [OPTIONS] COMMAND [ARGS]...")
    for command in ("purge", "get", "inspect", "refresh", "jobs"):
        assert f"  {command} " in top.out
    sub = ctl(["purge", "-h"])
    assert sub.code == 0
    assert sub.out.startswith("Usage: refresherctl purge [OPTIONS] [KEY]...")
    assert "--tag TAG" in sub.out and "--soft" in sub.out and "--url URL" in sub.out


# -- the token is never printed -------------------------------------------------------------


def echo_token(request: httpx.Request) -> httpx.Response:
    """A (misbehaving) service whose error message repeats the Authorization header."""
    return error(401, "unauthorized", f"bad token {request.headers['Authorization']}")


@pytest.mark.parametrize(
    ("argv", "environ", "fake"),
    [
        (["--token", TOKEN, "jobs"], {}, FakeRefresherd()),
        (["jobs", f"--token={TOKEN}"], {}, FakeRefresherd()),
        (["jobs"], {"REFRESHERD_TOKEN": TOKEN}, FakeRefresherd()),
        (["--token", TOKEN, "get", "x"], {}, FakeRefresherd()),
        (["--token", TOKEN, "jobs"], {}, FakeRefresherd(echo_token)),
        (["jobs"], {"REFRESHERD_TOKEN": TOKEN}, FakeRefresherd(echo_token)),
        (["--token", TOKEN, "purge", "k"], {}, FakeRefresherd(refuse)),
        (["--token", TOKEN, "get", "tweets", TOKEN], {}, FakeRefresherd()),
        (["--token", TOKEN, "purge"], {}, FakeRefresherd()),
        (["--token", TOKEN, "--help"], {}, FakeRefresherd()),
        (["--token", TOKEN, "jobs", "--json"], {}, FakeRefresherd()),
    ],
)
def test_the_token_is_sent_but_never_printed(
    argv: list[str], environ: dict[str, str], fake: FakeRefresherd
) -> None:
    result = ctl(argv, fake, environ=environ)
    assert TOKEN not in result.out
    assert TOKEN not in result.err
    for request in fake.requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_token_that_cannot_be_sent_is_a_usage_error_without_the_token() -> None:
    result = ctl(["--token", "my secret", "jobs"])
    assert result.code == 2
    assert "my secret" not in result.err
    assert "Error: --token or $REFRESHERD_TOKEN: a token is printable ASCII" in result.err


# -- main and the module boundary -----------------------------------------------------------


def test_main_exits_with_the_status_of_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["refresherctl", "get"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "Error: Missing argument 'JOB'." in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["refresherctl", "--help"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: refresherctl")


def test_the_ctl_module_imports_only_the_client_of_refresherd() -> None:
    source = open(ctl_module.__file__, encoding="utf-8").read()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    ours = [line for line in imports if "refresherd" in line]
    assert ours == ["from refresherd import __version__", "from refresherd.client import ("]


# -- reload ---------------------------------------------------------------------------------


RELOADED = {
    "source": "/etc/refresherd/refresherd.toml",
    "jobs": ["report", "tweets"],
    "added": ["report"],
    "changed": ["tweets"],
    "removed": [],
    "new_keys": ["tweets"],
    "tokens": True,
}


def test_reload_posts_to_the_admin_listener_and_prints_what_changed() -> None:
    fake = FakeRefresherd(httpx.Response(200, json=RELOADED))
    result = ctl(["reload"], fake)
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "reloaded /etc/refresherd/refresherd.toml: report, tweets",
        "  added: report",
        "  changed: tweets",
        "  new keys: tweets",
        "  tokens changed",
    ]
    request = fake.only
    assert (request.method, request.url.port, request.url.path) == ("POST", 8081, "/v1/reload")
    assert (request.headers["Content-Type"], request.content) == ("application/json", b"{}")


def test_reload_refused_prints_the_reason_and_exits_1() -> None:
    reason = "refresherd.toml: jobs.c.url: must be a string, not an integer"
    refused = {"error": {"code": "reload_refused", "message": reason}}
    result = ctl(["reload"], FakeRefresherd(httpx.Response(422, json=refused)))
    assert result.code == 1
    assert reason in result.err
    assert result.out == ""
