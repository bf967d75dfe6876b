"""
Tests for L{refresherd.config}: the TOML configuration of docs/configuration.md.
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refresherd.config import (
    MIB,
    AuthConfig,
    Config,
    JobConfig,
    Secret,
    ServerConfig,
    StoreConfig,
    load_config,
    parse_duration,
)
from refresherd.core.patterns import compile_pattern
from refresherd.errors import ConfigError

FILE = "refresherd.toml"

# Every table, and every key of a job, set once.
FULL_EXAMPLE = """
[server]
listen = "tcp:8080:interface=127.0.0.1"
admin_listen = "tcp:8081:interface=127.0.0.1"
max_body_bytes = 1048576
max_batch = 100

[store]
url = "redis://127.0.0.1:6379/0"
namespace = "rfd"

[auth]
read_tokens = ["env:RFD_READ"]
write_tokens = []
admin_tokens = ["file:/etc/refresherd/admin.token"]
metrics_tokens = []

[jobs.tweets]
args = ["username"]
arg_patterns = { username = "[A-Za-z0-9_]{1,15}" }
fetch = "http"
url = "https://api.example.com/users/{username}/tweets"
path_slash = false
method = "GET"
headers = { Accept = "application/json" }
fresh = "15m"
stale = "1d"
stale_if_error = "7d"
error_ttl = "5s"
on_miss = "wait"
wait_timeout = "5s"
timeout = "10s"
retries = 2
concurrency = 8
max_queue = 100
tags = ["user:{username}"]
version = 1
early_refresh = 1.0
max_value_bytes = 33554432
writable = true

[jobs.report]
args = ["year"]
fetch = "python"
callable = "myproject.reports:build_report"
fresh = "1h"
stale = "1d"
"""

HTTP_JOB = """
[jobs.j]
url = "https://example.com/{a}"
args = ["a"]
fresh = 60
"""


def fake_files(files: Mapping[str, str | bytes]) -> Callable[[str], bytes]:
    """A C{read_file} reading from C{files}; any other path does not exist."""

    def read_file(path: str) -> bytes:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        content = files[path]
        return content.encode("utf-8") if isinstance(content, str) else content

    return read_file


def load(
    text: str,
    environ: Mapping[str, str] | None = None,
    files: Mapping[str, str | bytes] | None = None,
) -> Config:
    """Load C{text} as C{refresherd.toml}, with C{files} readable for C{file:} secrets."""
    return load_config(FILE, environ or {}, read_file=fake_files({FILE: text, **(files or {})}))


def error_of(
    text: str,
    environ: Mapping[str, str] | None = None,
    files: Mapping[str, str | bytes] | None = None,
) -> str:
    """The message of the L{ConfigError} that loading C{text} raises; it is one line."""
    with pytest.raises(ConfigError) as info:
        load(text, environ, files)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{FILE}: ")
    return message


def job(extra: str, base: str = HTTP_JOB) -> str:
    """A config of one valid http job C{j} (argument C{a}) plus C{extra} lines."""
    return base + extra + "\n"


# The full example and defaults


def test_full_example_parses_with_its_values() -> None:
    config = load(
        FULL_EXAMPLE,
        environ={"RFD_READ": "read-token"},
        files={"/etc/refresherd/admin.token": "admin-token\n"},
    )
    assert config.source == FILE
    assert config.server == ServerConfig(
        listen="tcp:8080:interface=127.0.0.1",
        admin_listen="tcp:8081:interface=127.0.0.1",
        max_body_bytes=1048576,
        max_batch=100,
    )
    assert config.store == StoreConfig(url="redis://127.0.0.1:6379/0", namespace="rfd")
    assert config.auth == AuthConfig(
        read_tokens=(Secret("read-token", "env"),),
        admin_tokens=(Secret("admin-token", "file"),),
    )
    assert set(config.jobs) == {"tweets", "report"}
    tweets = config.jobs["tweets"]
    assert tweets == JobConfig(
        name="tweets",
        fresh=900.0,
        fetch="http",
        args=("username",),
        arg_patterns={"username": compile_pattern("[A-Za-z0-9_]{1,15}")},
        url="https://api.example.com/users/{username}/tweets",
        method="GET",
        headers={"Accept": Secret("application/json")},
        stale=86400.0,
        stale_if_error=7 * 86400.0,
        error_ttl=5.0,
        on_miss="wait",
        wait_timeout=5.0,
        timeout=10.0,
        retries=2,
        concurrency=8,
        max_queue=100,
        tags=("user:{username}",),
        version=1,
        early_refresh=1.0,
        max_value_bytes=33554432,
        writable=True,
    )
    report = config.jobs["report"]
    assert report == JobConfig(
        name="report",
        fresh=3600.0,
        fetch="python",
        args=("year",),
        callable="myproject.reports:build_report",
        stale=86400.0,
    )


def test_minimal_job_gets_every_default() -> None:
    config = load('[jobs.p]\ncallable = "m:f"\nfresh = "30s"\n')
    assert config.server == ServerConfig()
    assert config.store == StoreConfig(url="memory://", namespace="rfd")
    assert config.auth == AuthConfig()
    p = config.jobs["p"]
    assert (p.name, p.fetch, p.fresh, p.args, p.arg_patterns) == ("p", "python", 30.0, (), {})
    assert (p.url, p.method, p.headers, p.body, p.sign) == (None, "GET", {}, None, None)
    assert (p.stale, p.stale_if_error, p.error_ttl) == (0.0, 0.0, 5.0)
    assert (p.on_miss, p.wait_timeout, p.timeout) == ("wait", 5.0, 10.0)
    assert (p.retries, p.concurrency, p.max_queue) == (0, 8, 100)
    assert (p.tags, p.version, p.early_refresh, p.max_value_bytes) == ((), 1, 1.0, 32 * MIB)
    assert p.writable is False


def test_empty_file_gives_defaults_with_its_source() -> None:
    assert load("") == Config(source=FILE)


def test_no_path_and_no_default_file_gives_builtin_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}) == Config(source="<defaults>")


def test_no_path_reads_refresherd_toml_in_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "refresherd.toml").write_text('[store]\nnamespace = "here"\n')
    config = load_config(None, {})
    assert config.source == "refresherd.toml"
    assert config.store.namespace == "here"


def test_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"^{re.escape(path)}: no such file$"):
        load_config(path, {})


def test_named_file_is_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("[server]\nmax_batch = 7\n")
    config = load_config(str(path), {})
    assert (config.source, config.server.max_batch) == (str(path), 7)


def test_toml_syntax_error_is_one_line_with_file_and_position() -> None:
    message = error_of("[server]\nmax_batch = = 3\n")
    assert re.fullmatch(r"refresherd\.toml: .*\(at line 2, column \d+\)", message), message


def test_file_that_is_not_utf8_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^refresherd\.toml: not UTF-8 text$"):
        load_config(FILE, {}, read_file=fake_files({FILE: b"\xff\xfe"}))


# Unknown keys and types


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[srever]\n", "refresherd.toml: unknown key 'srever' (did you mean 'server'?)"),
        ("[server]\nport = 1\n", "refresherd.toml: server: unknown key 'port'"),
        ("[store]\nurl2 = 'x'\n", "refresherd.toml: store: unknown key 'url2'"),
        ("[auth]\nread = []\n", "refresherd.toml: auth: unknown key 'read'"),
        (
            job("frsh = 1"),
            "refresherd.toml: jobs.j: unknown key 'frsh' (did you mean 'fresh'?)",
        ),
    ],
)
def test_unknown_key_anywhere_is_an_error(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nmax_batch = '10'\n", "server.max_batch: must be an integer, not a string"),
        ("[server]\nmax_batch = true\n", "server.max_batch: must be an integer, not a boolean"),
        ("[server]\nmax_batch = 1.5\n", "server.max_batch: must be an integer, not a float"),
        ("[server]\nmax_batch = 0\n", "server.max_batch: must be at least 1, not 0"),
        ("[server]\nmax_body_bytes = -1\n", "server.max_body_bytes: must be at least 1, not -1"),
        ("[server]\nlisten = 8080\n", "server.listen: must be a string, not an integer"),
        ("server = 1\n", "server: must be a table, not an integer"),
        ("[store]\nurl = ['a']\n", "store.url: must be a string, not an array"),
        ("jobs = []\n", "jobs: must be a table, not an array"),
        ("[jobs]\nj = 1\n", "jobs.j: must be a table, not an integer"),
        (job("retries = '2'"), "jobs.j.retries: must be an integer, not a string"),
        (job("retries = -1"), "jobs.j.retries: must be at least 0, not -1"),
        (job("concurrency = 0"), "jobs.j.concurrency: must be at least 1, not 0"),
        (job("concurrency = false"), "jobs.j.concurrency: must be an integer, not a boolean"),
        (job("max_queue = -1"), "jobs.j.max_queue: must be at least 0, not -1"),
        (job("version = 0"), "jobs.j.version: must be at least 1, not 0"),
        (job("max_value_bytes = 0"), "jobs.j.max_value_bytes: must be at least 1, not 0"),
        (job("early_refresh = -0.5"), "jobs.j.early_refresh: must be a number of at least 0"),
        (job("early_refresh = true"), "jobs.j.early_refresh: must be a number, not a boolean"),
        (job("early_refresh = nan"), "jobs.j.early_refresh: must be a number of at least 0"),
        (job("on_miss = 'later'"), 'jobs.j.on_miss: must be "wait" or "empty", not \'later\''),
        (job("writable = 'yes'"), "jobs.j.writable: must be a boolean, not a string"),
        (job("writable = 1"), "jobs.j.writable: must be a boolean, not an integer"),
        (job("tags = 'x'"), "jobs.j.tags: must be an array, not a string"),
        (job("tags = [1]"), "jobs.j.tags[0]: must be a string, not an integer"),
        ("[jobs.j]\nargs = 'a'\nfresh = 1\ncallable = 'm:f'\n", "jobs.j.args: must be an array"),
        (job("created = 2024-01-01"), "jobs.j: unknown key 'created'"),
    ],
)
def test_wrong_type_or_range_names_file_and_key(text: str, expected: str) -> None:
    assert error_of(text).startswith(f"{FILE}: {expected}")


def test_integers_in_range_are_accepted() -> None:
    j = load(
        job("retries = 0\nconcurrency = 1\nmax_queue = 0\nversion = 3\nearly_refresh = 0")
    ).jobs["j"]
    assert (j.retries, j.concurrency, j.max_queue, j.version, j.early_refresh) == (0, 1, 0, 3, 0)


# Durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (1, 1.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("0ms", 0.0),
        ("1.5ms", 0.0015),
        ("30s", 30.0),
        ("0.25s", 0.25),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("7d", 604800.0),
    ],
)
def test_parse_duration_accepts_numbers_and_unit_strings(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "15x",
        "15",
        "",
        "m",
        " 15m",
        "15m ",
        "15m\n",
        "1.m",
        ".5s",
        "-5s",
        "+5s",
        "5 s",
        "5S",
        "1e3s",
        "5sec",
        "\u0661\u0665m",  # Arabic-Indic digits are not \d here
        True,
        False,
        None,
        [1],
        math.nan,
        math.inf,
    ],
)
def test_parse_duration_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match=r"^not a duration: .* \(a number of seconds or a string"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_parse_duration_refuses_negative_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="^a duration may not be negative: -"):
        parse_duration(value)


@given(st.from_regex(r"[0-9]+(\.[0-9]+)?(ms|s|m|h|d)", fullmatch=True))
def test_every_string_of_the_duration_form_parses(text: str) -> None:
    match = re.fullmatch(r"([0-9.]+)(\w+)", text)
    assert match is not None
    number, unit = match.groups()
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    seconds = parse_duration(text)
    assert seconds >= 0
    assert seconds == pytest.approx(float(number) * scale)


@given(st.text().filter(lambda s: not re.fullmatch(r"[0-9]+(\.[0-9]+)?(ms|s|m|h|d)", s)))
def test_every_other_string_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="^not a duration: "):
        parse_duration(text)


@given(st.floats(min_value=0, allow_infinity=False) | st.integers(min_value=0, max_value=2**63))
def test_every_non_negative_number_is_that_many_seconds(value: float) -> None:
    assert parse_duration(value) == float(value)


def test_bad_job_duration_names_file_key_and_value() -> None:
    assert error_of(job("fresh = '15x'", base=HTTP_JOB.replace("fresh = 60\n", ""))) == (
        "refresherd.toml: jobs.j.fresh: not a duration: '15x' "
        '(a number of seconds or a string like "500ms", "30s", "15m", "2h", "7d")'
    )


@pytest.mark.parametrize("key", ["stale", "stale_if_error", "error_ttl"])
def test_policy_durations_may_be_zero_but_not_negative(key: str) -> None:
    assert getattr(load(job(f"{key} = '0s'")).jobs["j"], key) == 0.0
    assert error_of(job(f"{key} = -1")).startswith(
        f"refresherd.toml: jobs.j.{key}: a duration may not be negative: -1"
    )


@pytest.mark.parametrize("key", ["fresh", "timeout", "wait_timeout"])
def test_fresh_and_timeouts_must_be_more_than_zero(key: str) -> None:
    base = HTTP_JOB.replace("fresh = 60\n", "fresh = 60\n" if key != "fresh" else "")
    assert error_of(job(f"{key} = '0ms'", base=base)) == (
        f"refresherd.toml: jobs.j.{key}: must be more than 0 seconds, not '0ms'"
    )


def test_freshness_from_the_origin_with_its_cap_and_floor() -> None:
    plain = load(job("")).jobs["j"]
    assert (plain.freshness, plain.max_fresh, plain.min_refresh) == ("job", None, 1.0)
    origin = load(job('freshness = "origin"\nmax_fresh = "1h"\nmin_refresh = "250ms"')).jobs["j"]
    assert (origin.freshness, origin.max_fresh, origin.min_refresh) == ("origin", 3600.0, 0.25)
    assert load(job('min_refresh = "0s"')).jobs["j"].min_refresh == 0.0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('freshness = "headers"', 'jobs.j.freshness: must be "job" or "origin", not \'headers\''),
        ('max_fresh = "1h"', 'jobs.j.max_fresh: only allowed with freshness = "origin"'),
        (
            'freshness = "origin"\nmax_fresh = "30s"',
            "jobs.j.max_fresh: must be at least fresh (60)",
        ),
        ("min_refresh = -1", "jobs.j.min_refresh: a duration may not be negative: -1"),
        ("tags = [" + ", ".join(['"t"'] * 129) + "]", "jobs.j.tags: at most 128 tags"),
    ],
)
def test_freshness_keys_are_checked(extra: str, expected: str) -> None:
    assert error_of(job(extra)).startswith(f"refresherd.toml: {expected}")


@pytest.mark.parametrize("key", ["freshness", "max_fresh"])
def test_freshness_from_the_origin_is_for_http_jobs(key: str) -> None:
    text = f'[jobs.j]\ncallable = "m:f"\nfresh = 60\n{key} = "origin"\n'
    assert error_of(text) == f"refresherd.toml: jobs.j.{key}: not allowed for a python job"


def test_keep_hot_is_at_most_the_hot_keys_kept() -> None:
    assert load(job("keep_hot = 100")).jobs["j"].keep_hot == 100
    assert error_of(job("keep_hot = 101")) == (
        "refresherd.toml: jobs.j.keep_hot: 101 is more than the hot keys kept per job "
        "(server.hot_keys = 100)"
    )
    text = "[server]\nhot_keys = 0\n" + job("keep_hot = 1")
    assert "server.hot_keys = 0" in error_of(text)


def test_fresh_is_required() -> None:
    assert error_of('[jobs.j]\ncallable = "m:f"\n') == (
        "refresherd.toml: jobs.j: missing required key 'fresh'"
    )


# Names


@pytest.mark.parametrize("name", ["a", "A-b_9", "x" * 64])
def test_valid_job_names_are_accepted(name: str) -> None:
    assert name in load(f'[jobs."{name}"]\ncallable = "m:f"\nfresh = 1\n').jobs


@pytest.mark.parametrize("name", ["a b", "a.b", "é", "x" * 65, ""])
def test_invalid_job_name_is_an_error(name: str) -> None:
    assert error_of(f'[jobs."{name}"]\ncallable = "m:f"\nfresh = 1\n') == (
        f"refresherd.toml: jobs: not a valid job name: {name!r} (1 to 64 of A-Z a-z 0-9 _ -)"
    )


@pytest.mark.parametrize("namespace", ["", "a:b", "x" * 65])
def test_invalid_namespace_is_an_error(namespace: str) -> None:
    assert error_of(f'[store]\nnamespace = "{namespace}"\n').startswith(
        f"refresherd.toml: store.namespace: not a valid name: {namespace!r}"
    )


@pytest.mark.parametrize("arg", ["1a", "a-b", "", "a b"])
def test_invalid_argument_name_is_an_error(arg: str) -> None:
    text = f'[jobs.j]\ncallable = "m:f"\nfresh = 1\nargs = ["ok", "{arg}"]\n'
    assert error_of(text).startswith(
        f"refresherd.toml: jobs.j.args[1]: not a valid argument name: {arg!r}"
    )


def test_duplicate_argument_is_an_error() -> None:
    text = '[jobs.j]\ncallable = "m:f"\nfresh = 1\nargs = ["a", "_b", "a"]\n'
    assert error_of(text) == "refresherd.toml: jobs.j.args[2]: argument 'a' is declared twice"


# Fetch kinds


def test_fetch_is_inferred_from_url_or_callable() -> None:
    assert load(HTTP_JOB).jobs["j"].fetch == "http"
    assert load('[jobs.j]\ncallable = "m:f"\nfresh = 1\n').jobs["j"].fetch == "python"


def test_job_without_url_or_callable_is_an_error() -> None:
    assert error_of("[jobs.j]\nfresh = 1\n") == (
        'refresherd.toml: jobs.j: needs url (fetch = "http") or callable (fetch = "python")'
    )


def test_job_with_url_and_callable_and_no_fetch_is_an_error() -> None:
    assert error_of(job('callable = "m:f"')).startswith(
        "refresherd.toml: jobs.j: has both url and callable"
    )


def test_unknown_fetch_kind_is_an_error() -> None:
    assert error_of(job('fetch = "ftp"')) == (
        'refresherd.toml: jobs.j.fetch: must be "http" or "python", not \'ftp\''
    )


def test_http_job_needs_url() -> None:
    assert error_of('[jobs.j]\nfetch = "http"\nfresh = 1\n') == (
        "refresherd.toml: jobs.j: missing required key 'url' (an http job)"
    )


def test_python_job_needs_callable() -> None:
    assert error_of('[jobs.j]\nfetch = "python"\nfresh = 1\n') == (
        "refresherd.toml: jobs.j: missing required key 'callable' (a python job)"
    )


def test_http_job_refuses_callable() -> None:
    assert error_of(job('fetch = "http"\ncallable = "m:f"')) == (
        "refresherd.toml: jobs.j.callable: not allowed for an http job"
    )


@pytest.mark.parametrize(
    "line",
    [
        'url = "https://x/"',
        'method = "GET"',
        "headers = {}",
        "body = {}",
        'sign = "k"',
        "path_slash = true",
    ],
)
def test_python_job_refuses_http_keys(line: str) -> None:
    key = line.split(" ")[0]
    text = f'[jobs.j]\nfetch = "python"\ncallable = "m:f"\nfresh = 1\n{line}\n'
    assert error_of(text) == f"refresherd.toml: jobs.j.{key}: not allowed for a python job"


@pytest.mark.parametrize("target", ["m:f", "pkg.mod:attr", "pkg.mod:Cls.meth", "_p:_x"])
def test_valid_callable_is_kept_without_importing_it(target: str) -> None:
    text = f'[jobs.j]\ncallable = "{target}"\nfresh = 1\n'
    assert load(text).jobs["j"].callable == target


@pytest.mark.parametrize("target", ["m.f", "m:", ":f", "m:f:g", "1m:f", "m..n:f", "m:f()", "m: f"])
def test_invalid_callable_is_an_error(target: str) -> None:
    assert error_of(f'[jobs.j]\ncallable = "{target}"\nfresh = 1\n') == (
        f"refresherd.toml: jobs.j.callable: must be 'package.module:attribute', not {target!r}"
    )


# HTTP jobs


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("ftp://example.com/", "must be an absolute http:// or https:// URL"),
        ("/relative", "must be an absolute http:// or https:// URL"),
        ("https:///x", "has no host"),
        ("https://{a}.example.com/", "has a placeholder in its host"),
        ("https://example.com/{a", "has a '{' or '}' that is not a {name} placeholder"),
        ("https://example.com/{b}", "placeholder {b} is not one of the job's args ['a']"),
        ("https://example.com/a b", "contains white space or a control character"),
    ],
)
def test_invalid_url_is_an_error(url: str, what: str) -> None:
    text = f'[jobs.j]\nargs = ["a"]\nfresh = 1\nurl = "{url}"\n'
    assert error_of(text).startswith(f"refresherd.toml: jobs.j.url: {what}")


def test_url_with_credentials_is_not_repeated_in_errors() -> None:
    text = '[jobs.j]\nfresh = 1\nurl = "https://user:hunter2@{x}/"\n'
    assert "hunter2" not in error_of(text)


def test_a_literal_url_is_not_secret() -> None:
    j = load(HTTP_JOB).jobs["j"]
    assert (j.url, j.url_secret) == ("https://example.com/{a}", False)


@pytest.mark.parametrize(
    ("written", "environ", "files"),
    [
        ("env:HOOK", {"HOOK": "https://hooks.example/T0/s3cret/{a}"}, {}),
        ("file:/run/hook", {}, {"/run/hook": "https://hooks.example/T0/s3cret/{a}\n"}),
    ],
)
def test_a_url_may_be_given_as_env_or_file_and_is_then_secret(
    written: str, environ: dict[str, str], files: dict[str, str]
) -> None:
    text = f'[jobs.j]\nargs = ["a"]\nfresh = 1\nurl = "{written}"\n'
    j = load(text, environ, files).jobs["j"]
    assert (j.url, j.url_secret) == ("https://hooks.example/T0/s3cret/{a}", True)


def test_a_url_from_env_is_checked_without_showing_it() -> None:
    environ = {"HOOK": "https://s3cret.{a}.example/"}
    text = '[jobs.j]\nargs = ["a"]\nfresh = 1\nurl = "env:HOOK"\n'
    message = error_of(text, environ)
    assert message.startswith("refresherd.toml: jobs.j.url: has a placeholder in its host")
    assert "s3cret" not in message
    assert error_of(text) == ("refresherd.toml: jobs.j.url: environment variable 'HOOK' is not set")


def test_url_secret_is_not_a_key() -> None:
    assert error_of(job("url_secret = true")).startswith(
        "refresherd.toml: jobs.j: unknown key 'url_secret'"
    )


def test_path_slash_is_off_unless_set() -> None:
    assert load(HTTP_JOB).jobs["j"].path_slash is False
    assert load(job("path_slash = true")).jobs["j"].path_slash is True
    assert error_of(job('path_slash = "yes"')) == (
        "refresherd.toml: jobs.j.path_slash: must be a boolean, not a string"
    )


def test_method_is_uppercased() -> None:
    assert load(job('method = "post"')).jobs["j"].method == "POST"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "get me"])
def test_other_methods_are_refused(method: str) -> None:
    assert error_of(job(f'method = "{method}"')) == (
        f'refresherd.toml: jobs.j.method: must be "GET" or "POST", not {method!r}'
    )


def test_body_as_table_is_kept() -> None:
    j = load(job('method = "POST"\nbody = { user = "{a}", n = [1, 2.5, true] }')).jobs["j"]
    assert j.body == {"user": "{a}", "n": [1, 2.5, True]}


def test_body_as_json_text_is_parsed() -> None:
    j = load(job('method = "POST"\nbody = \'{"q": ["{a}"], "x": null}\'')).jobs["j"]
    assert j.body == {"q": ["{a}"], "x": None}


def test_post_without_body_has_none() -> None:
    assert load(job('method = "POST"')).jobs["j"].body is None


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("body = {a = 1}", 'only allowed with method = "POST"'),
        ('method = "POST"\nbody = "{nope"', "not valid JSON: "),
        ('method = "POST"\nbody = "NaN"', "not valid JSON: NaN is not JSON"),
        ('method = "POST"\nbody = "42"', "must be a JSON object or array"),
        ('method = "POST"\nbody = 42', "must be a JSON object or array"),
        ('method = "POST"\nbody = {x = inf}', "holds inf, which JSON cannot"),
        ('method = "POST"\nbody = {x = 1979-05-27}', "holds a date, which JSON cannot"),
        ('method = "POST"\nbody = {x = "{b}"}', "placeholder {b} is not one of the job's args"),
        ('method = "POST"\nbody = \'{"{b}": 1}\'', "placeholder {b} is not one of the job's"),
    ],
)
def test_invalid_body_is_an_error(line: str, what: str) -> None:
    assert error_of(job(line)).startswith(f"refresherd.toml: jobs.j.body: {what}")


def test_headers_are_secrets() -> None:
    j = load(
        job('headers = { Accept = "application/json", X-Key = "env:KEY" }'),
        environ={"KEY": "k1"},
    ).jobs["j"]
    assert j.headers == {"Accept": Secret("application/json"), "X-Key": Secret("k1", "env")}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('headers = { "Bad Name" = "x" }', "jobs.j.headers: not a valid header name: 'Bad Name'"),
        ('headers = { "X:y" = "x" }', "jobs.j.headers: not a valid header name: 'X:y'"),
        ('headers = { X = "a\\r\\nEvil: 1" }', "jobs.j.headers.X: a header value may not hold"),
        ("headers = { X = 1 }", "jobs.j.headers.X: must be a string, not an integer"),
        ('headers = { Content-Length = "1" }', "jobs.j.headers.Content-Length: this header is"),
        ('headers = { A = "1", a = "2" }', "jobs.j.headers.a: this header is given twice"),
        ('headers = ["A"]', "jobs.j.headers: must be a table, not an array"),
    ],
)
def test_invalid_header_is_an_error(line: str, expected: str) -> None:
    assert error_of(job(line)).startswith(f"refresherd.toml: {expected}")


def test_sign_is_a_secret() -> None:
    j = load(job('sign = "file:/run/sign"'), files={"/run/sign": "  k3y \n"}).jobs["j"]
    assert j.sign == Secret("k3y", "file")


def test_empty_sign_is_an_error() -> None:
    assert error_of(job('sign = "env:S"'), environ={"S": ""}) == (
        "refresherd.toml: jobs.j.sign: the signing secret is empty (env)"
    )


# Arguments: patterns and tags


def test_arg_patterns_are_compiled() -> None:
    j = load(job('arg_patterns = { a = "[0-9]+" }')).jobs["j"]
    assert j.arg_patterns["a"].fullmatch("123")
    assert not j.arg_patterns["a"].fullmatch("12x")


def test_arg_pattern_for_undeclared_arg_is_an_error() -> None:
    assert error_of(job('arg_patterns = { b = "x" }')) == (
        "refresherd.toml: jobs.j.arg_patterns.b: not one of the job's args ['a']"
    )


def test_arg_pattern_that_does_not_compile_is_an_error() -> None:
    assert error_of(job('arg_patterns = { a = "[0-9" }')) == (
        "refresherd.toml: jobs.j.arg_patterns.a: not a pattern RE2 can run (missing ]: [0-9);"
        " RE2 has no backreferences or lookaround"
    )


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("(a)\\\\1", "invalid escape sequence: \\1"),
        ("(?P<x>a)(?P=x)", "invalid perl operator: (?P"),
        ("(?=a)a", "invalid perl operator: (?="),
        ("(?!a)b", "invalid perl operator: (?!"),
        ("(?<=a)b", "invalid perl operator: (?<="),
        ("a\\\\Z", "invalid escape sequence: \\Z"),
        ("a{1001}", "invalid repetition size: {1001}"),
    ],
)
def test_arg_pattern_that_re2_cannot_run_is_refused_at_start_up(pattern: str, why: str) -> None:
    """Python's C{re} compiles all of these; RE2 refuses them, each with one line."""
    assert error_of(job(f'arg_patterns = {{ a = "{pattern}" }}')) == (
        f"refresherd.toml: jobs.j.arg_patterns.a: not a pattern RE2 can run ({why});"
        " RE2 has no backreferences or lookaround"
    )


def test_arg_patterns_run_in_linear_time() -> None:
    """
    C{(a+)+b} backtracks exponentially in Python's C{re}: this test would not
    return.  RE2 answers in one pass over the value.
    """
    pattern = load(job('arg_patterns = { a = "(a+)+b" }')).jobs["j"].arg_patterns["a"]
    assert pattern.fullmatch("a" * 5000 + "c") is False
    assert pattern.fullmatch("a" * 5000 + "b") is True


def test_arg_pattern_that_is_not_a_string_is_an_error() -> None:
    assert error_of(job("arg_patterns = { a = 5 }")) == (
        "refresherd.toml: jobs.j.arg_patterns.a: must be a string, not an integer"
    )


def test_tags_are_kept_as_templates() -> None:
    assert load(job('tags = ["user:{a}", "all"]')).jobs["j"].tags == ("user:{a}", "all")


@pytest.mark.parametrize(
    ("tags", "what"),
    [
        ('["ok", "user:{b}"]', "jobs.j.tags[1]: placeholder {b} is not one of the job's args"),
        ('["user:{a"]', "jobs.j.tags[0]: has a '{' or '}' that is not a {name} placeholder"),
        ('[""]', "jobs.j.tags[0]: a tag may not be empty"),
    ],
)
def test_invalid_tag_is_an_error(tags: str, what: str) -> None:
    assert error_of(job(f"tags = {tags}")).startswith(f"refresherd.toml: {what}")


# Secrets and tokens


def test_tokens_from_literal_env_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("\n  from-file \n")
    config = load_config(
        str(tmp_path / "c.toml"),
        {"RFD_READ": "from-env"},
        read_file=lambda p: (
            f'[auth]\nread_tokens = ["env:RFD_READ", "lit"]\n'
            f'admin_tokens = ["file:{token_file}"]\n'.encode()
            if p.endswith("c.toml")
            else token_file.read_bytes()
        ),
    )
    assert config.auth.read_tokens == (Secret("from-env", "env"), Secret("lit", "literal"))
    assert config.auth.admin_tokens == (Secret("from-file", "file"),)


def test_file_secret_is_read_from_disk_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("\tabc123\n")
    (tmp_path / "c.toml").write_text(f'[auth]\nmetrics_tokens = ["file:{tmp_path}/tok"]\n')
    config = load_config(str(tmp_path / "c.toml"), {})
    assert config.auth.metrics_tokens == (Secret("abc123", "file"),)


def test_missing_environment_variable_is_named() -> None:
    assert error_of('[auth]\nread_tokens = ["ok", "env:RFD_NOPE"]\n') == (
        "refresherd.toml: auth.read_tokens[1]: environment variable 'RFD_NOPE' is not set"
    )


def test_unreadable_secret_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    (tmp_path / "c.toml").write_text(f'[auth]\nwrite_tokens = ["file:{missing}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "c.toml"), {})
    assert str(info.value) == (
        f"{tmp_path}/c.toml: auth.write_tokens[0]: "
        f"cannot read '{missing}': No such file or directory"
    )


@pytest.mark.parametrize(
    ("token", "environ", "what"),
    [
        ('""', {}, "the token is empty (literal)"),
        ('"env:E"', {"E": ""}, "the token is empty (env)"),
        ('"file:/t"', {}, "the token is empty (file)"),
        ('"env:"', {}, '"env:" needs the name of an environment variable'),
        ('"file:"', {}, '"file:" needs a path'),
        ('"two words"', {}, "a token may hold only printable ASCII, no white space"),
        ('"env:E"', {"E": "abc\n"}, "a token may hold only printable ASCII, no white space"),
        ("1", {}, "must be a string, not an integer"),
    ],
)
def test_invalid_token_is_an_error(token: str, environ: dict[str, str], what: str) -> None:
    text = f"[auth]\nadmin_tokens = [{token}]\n"
    assert error_of(text, environ, files={"/t": " \n"}) == (
        f"refresherd.toml: auth.admin_tokens[0]: {what}"
    )


SECRET = "s3cr3t-VALUE"


@pytest.mark.parametrize(
    ("text", "environ", "files"),
    [
        (f'[auth]\nread_tokens = ["{SECRET} x"]\n', {}, {}),
        ('[auth]\nread_tokens = ["env:T"]\n', {"T": f"{SECRET}\n"}, {}),
        ('[auth]\nread_tokens = ["file:/t"]\n', {}, {"/t": f"{SECRET} {SECRET}"}),
        (job('headers = { X = "env:T" }'), {"T": f"{SECRET}\r\n"}, {}),
        (job(f'headers = {{ X = "{SECRET}\\n" }}'), {}, {}),
        (job('sign = "env:T"\nretries = -1'), {"T": SECRET}, {}),
        (job(f'sign = "{SECRET}"\nfrsh = 1'), {}, {}),
    ],
)
def test_secret_values_never_appear_in_errors(
    text: str, environ: dict[str, str], files: dict[str, str]
) -> None:
    assert SECRET not in error_of(text, environ, files)


def test_secret_values_never_appear_in_repr() -> None:
    config = load(
        job(
            '[auth]\nread_tokens = ["env:T", "lit-' + SECRET + '"]\nadmin_tokens = ["file:/t"]\n',
            base=job(f'sign = "{SECRET}"\nheaders = {{ Authorization = "env:T" }}'),
        ),
        environ={"T": SECRET},
        files={"/t": SECRET},
    )
    assert config.auth.read_tokens[1].value == f"lit-{SECRET}"
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert repr(Secret(SECRET, "env")) == "Secret(<env>)"


def test_secret_source_says_whether_to_redact() -> None:
    assert not Secret("x").redacted
    assert Secret("x", "env").redacted
    assert Secret("x", "file").redacted


def test_access_log_is_off_unless_set_to_true() -> None:
    assert load("").server.access_log is False
    assert load("[server]\naccess_log = true\n").server.access_log is True
    for value in ('"yes"', "1"):
        message = error_of(f"[server]\naccess_log = {value}\n")
        assert message.startswith("refresherd.toml: server.access_log: must be a boolean"), message


def test_integers_are_still_refused_as_booleans_and_booleans_as_integers() -> None:
    assert "must be an integer, not a boolean" in error_of("[server]\nmax_batch = true\n")


def test_the_connection_bounds_default_to_1024_no_bound_per_address_and_a_10_s_head() -> None:
    server = load("").server
    assert (server.max_connections, server.max_connections_per_address) == (1024, 0)
    assert server.head_timeout == 10.0


def test_the_connection_bounds_are_read_from_server() -> None:
    server = load(
        '[server]\nmax_connections = 64\nmax_connections_per_address = 8\nhead_timeout = "2500ms"\n'
    ).server
    assert (server.max_connections, server.max_connections_per_address) == (64, 8)
    assert server.head_timeout == 2.5
    assert load("[server]\nhead_timeout = 3\n").server.head_timeout == 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_connections = 0", "server.max_connections: must be at least 1, not 0"),
        ("max_connections = '9'", "server.max_connections: must be an integer, not a string"),
        (
            "max_connections_per_address = -1",
            "server.max_connections_per_address: must be at least 0, not -1",
        ),
        (
            "max_connections_per_address = 2.0",
            "server.max_connections_per_address: must be an integer, not a float",
        ),
        ("head_timeout = '0s'", "server.head_timeout: must be more than 0 seconds, not '0s'"),
        ("head_timeout = '10'", "server.head_timeout: not a duration: '10'"),
        ("head_timeout = -1", "server.head_timeout: a duration may not be negative: -1"),
        ("max_conections = 5", "server: unknown key 'max_conections' (did you mean"),
    ],
)
def test_a_bad_connection_bound_stops_start_up_with_one_line(text: str, expected: str) -> None:
    message = error_of(f"[server]\n{text}\n")
    assert message.startswith(f"refresherd.toml: {expected}"), message
    assert "\n" not in message


def test_hot_keys_default_to_100_keys_of_a_60_s_half_life_and_are_read_from_server() -> None:
    server = load("").server
    assert (server.hot_keys, server.hot_half_life) == (100, 60.0)
    server = load('[server]\nhot_keys = 0\nhot_half_life = "5m"\n').server
    assert (server.hot_keys, server.hot_half_life) == (0, 300.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hot_keys = -1", "server.hot_keys: must be at least 0, not -1"),
        ("hot_keys = 10001", "server.hot_keys: must be at most 10000, not 10001"),
        ("hot_keys = '5'", "server.hot_keys: must be an integer, not a string"),
        ("hot_half_life = '0s'", "server.hot_half_life: must be more than 0 seconds, not '0s'"),
        ("hot_half_life = 'soon'", "server.hot_half_life: not a duration: 'soon'"),
    ],
)
def test_a_bad_hot_keys_setting_stops_start_up_with_one_line(text: str, expected: str) -> None:
    message = error_of(f"[server]\n{text}\n")
    assert message.startswith(f"refresherd.toml: {expected}"), message


# warm and warm_file

WARM_JOB = """
[jobs.u]
args = ["name"]
arg_patterns = { name = "[a-z]+" }
url = "https://x.example/{name}"
fresh = "5m"
"""


def test_warm_lists_and_warm_files_give_the_argument_sets_each_once() -> None:
    text = WARM_JOB + 'warm = [{name = "bob"}, {name = "alice"}]\nwarm_file = "args.jsonl"\n'
    lines = '# kept ready\n\n{"name": "carol"}\n  {"name": "bob"}\n'
    config = load(text, files={"args.jsonl": lines})
    assert config.jobs["u"].warm == ({"name": "bob"}, {"name": "alice"}, {"name": "carol"})
    assert load(WARM_JOB).jobs["u"].warm == ()


def test_a_warm_file_is_relative_to_the_configuration_files_directory() -> None:
    text = WARM_JOB + 'warm_file = "args.jsonl"\n'
    config = load_config(
        "/etc/rfd/refresherd.toml",
        {},
        read_file=fake_files(
            {"/etc/rfd/refresherd.toml": text, "/etc/rfd/args.jsonl": '{"name": "bob"}'}
        ),
    )
    assert config.jobs["u"].warm == ({"name": "bob"},)


@pytest.mark.parametrize(
    ("extra", "lines", "expected"),
    [
        (
            'warm = [{name = "Bob"}]',
            "",
            "jobs.u.warm[0]: argument 'name' does not match '[a-z]+'",
        ),
        ('warm = [{nom = "bob"}]', "", "jobs.u.warm[0]: job 'u' takes no argument 'nom'"),
        ('warm = ["bob"]', "", "jobs.u.warm[0]: must be a table, not a string"),
        (
            'warm_file = "a.jsonl"',
            '{"name": "bob"}\n# x\n{"name": "B"}\n',
            "jobs.u.warm_file: a.jsonl line 3: argument 'name' does not match '[a-z]+'",
        ),
        (
            'warm_file = "a.jsonl"',
            '{"name": "bob"\n',
            "jobs.u.warm_file: a.jsonl line 1: not a JSON object: ",
        ),
        (
            'warm_file = "a.jsonl"',
            '["bob"]\n',
            "jobs.u.warm_file: a.jsonl line 1: must be a JSON object of arguments, not an array",
        ),
        (
            'warm_file = "a.jsonl"',
            '{"name": 1}\n',
            "jobs.u.warm_file: a.jsonl line 1: argument 'name' must be a string",
        ),
        ('warm_file = "b.jsonl"', "", "jobs.u.warm_file: cannot read 'b.jsonl': "),
    ],
)
def test_a_bad_warm_argument_set_stops_start_up_with_one_line(
    extra: str, lines: str, expected: str
) -> None:
    message = error_of(WARM_JOB + extra + "\n", files={"a.jsonl": lines})
    assert message.startswith(f"{FILE}: {expected}")


def test_at_most_ten_thousand_warm_argument_sets() -> None:
    names = ["".join(letters) for letters in itertools.product(string.ascii_lowercase, repeat=3)]
    lines = [f'{{"name": "{name}"}}\n' for name in names[:10_001]]
    text = WARM_JOB + 'warm_file = "a.jsonl"\n'
    assert len(load(text, files={"a.jsonl": "".join(lines[:-1])}).jobs["u"].warm) == 10_000
    message = error_of(text, files={"a.jsonl": "".join(lines)})
    assert message.endswith(
        "a.jsonl line 10001: more than 10000 argument sets to warm (warm and warm_file)"
    )
