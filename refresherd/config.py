"""
The configuration: TOML (docs/configuration.md) parsed and validated completely at
start-up into frozen values.  Any mistake is a L{ConfigError} with one line
naming the file, the key and what is wrong.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import attrs

from refresherd.core.args import check_args
from refresherd.core.patterns import ArgPattern, compile_pattern
from refresherd.core.templates import (
    PLACEHOLDER,
    check_url_template,
    json_placeholders,
    placeholders,
)
from refresherd.errors import BadArgs, ConfigError, one_line

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_ADMIN_LISTEN = "tcp:8081:interface=127.0.0.1"
DEFAULT_STORE = "memory://"
MIB = 1024 * 1024


@attrs.frozen(repr=False)
class Secret:
    """
    A token, a signing key or a header value.  C{source} is C{"literal"},
    C{"env"} or C{"file"}; values from C{env:} and C{file:} are redacted
    wherever configuration is shown.  The repr never shows the value.
    """

    value: str
    source: str = "literal"

    @property
    def redacted(self) -> bool:
        return self.source != "literal"

    def __repr__(self) -> str:
        return f"Secret(<{self.source}>)"


@attrs.frozen
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    max_body_bytes: int = MIB
    max_batch: int = 100
    access_log: bool = False
    """Log one line per request (method, route, status, duration, client)."""
    max_connections: int = 1024
    """Open connections per listener and process; at the cap the longest idle one makes room."""
    max_connections_per_address: int = 0
    """Open connections per client address, per listener and process; 0: no bound."""
    head_timeout: float = 10.0
    """Seconds a request's head may take: from the connection's start, or its first byte."""
    hot_keys: int = 100
    """The keys each job's hot keys sketch keeps (K); 0: no sketch."""
    hot_half_life: float = 60.0
    """Seconds after which a request counts half in the hot keys sketch."""


MAX_HOT_KEYS = 10_000
"""The most keys a job's hot keys sketch may keep (C{[server] hot_keys})."""


@attrs.frozen
class StoreConfig:
    url: str = DEFAULT_STORE
    namespace: str = "rfd"


@attrs.frozen
class AuthConfig:
    read_tokens: tuple[Secret, ...] = ()
    write_tokens: tuple[Secret, ...] = ()
    admin_tokens: tuple[Secret, ...] = ()
    metrics_tokens: tuple[Secret, ...] = ()


@attrs.frozen
class JobConfig:
    """
    One job: every key of docs/configuration.md ("`[jobs.NAME]`", "HTTP jobs",
    "Python jobs"), with its default filled in.
    """

    name: str
    fresh: float
    fetch: str
    args: tuple[str, ...] = ()
    arg_patterns: Mapping[str, ArgPattern] = attrs.field(factory=dict)
    # fetch = "http"
    url: str | None = None
    url_secret: bool = False
    """The URL was given as C{env:} or C{file:}: its path and query are not shown."""
    path_slash: bool = False
    """Arguments in the URL's path may be empty or hold C{/} and C{\\}."""
    method: str = "GET"
    headers: Mapping[str, Secret] = attrs.field(factory=dict)
    body: Any = None
    """The parsed JSON template of a POST body, or None."""
    sign: Secret | None = None
    freshness: str = "job"
    """C{"origin"}: the origin's caching headers set each entry's windows (docs/http-caching.md)."""
    max_fresh: float | None = None
    """With C{freshness = "origin"}: the longest C{fresh} an origin may ask (None: C{fresh})."""
    # fetch = "python"
    callable: str | None = None
    # policy
    stale: float = 0.0
    stale_if_error: float = 0.0
    error_ttl: float = 5.0
    on_miss: str = "wait"
    wait_timeout: float = 5.0
    timeout: float = 10.0
    retries: int = 0
    concurrency: int = 8
    max_queue: int = 100
    tags: tuple[str, ...] = ()
    version: int = 1
    early_refresh: float = 1.0
    keep_hot: int = 0
    """The hottest keys of the job refreshed before they would go stale (refresh-ahead)."""
    min_refresh: float = 1.0
    """Background refreshes of one key are never closer together, whatever an origin asks."""
    max_value_bytes: int = 32 * MIB
    writable: bool = False
    """PUT may write this job's values (with a write or admin token)."""
    warm: tuple[Mapping[str, str], ...] = ()
    """The argument sets kept ready with no request (C{warm} and C{warm_file}), each once."""


@attrs.frozen
class Config:
    source: str
    """The file it was read from, or C{"<defaults>"}."""
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    jobs: Mapping[str, JobConfig] = attrs.field(factory=dict)


DEFAULT_PATH = "refresherd.toml"
"""The configuration file read when none is given, if it exists."""
MAX_JOB_TAGS = 128
MAX_WARM = 10_000
"""Argument sets a job's C{warm} and C{warm_file} may name in all (one timer each)."""
"""Tags per job; with an origin's, an entry carries at most 256 (refresherd.entry.MAX_TAGS)."""
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_HINT = 'a number of seconds or a string like "500ms", "30s", "15m", "2h", "7d"'
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_HINT = "1 to 64 of A-Z a-z 0-9 _ -"
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "x-refresherd-signature"}
)
_TOKEN = re.compile(r"[\x21-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HTTP_ONLY = ("url", "method", "headers", "body", "sign", "path_slash", "freshness", "max_fresh")
_POSITIVE_DURATIONS = ("fresh", "timeout", "wait_timeout")
_DURATIONS = ("stale", "stale_if_error", "error_ttl", "min_refresh", *_POSITIVE_DURATIONS)
_INT_MINIMUMS = {
    "retries": 0,
    "concurrency": 1,
    "max_queue": 0,
    "version": 1,
    "max_value_bytes": 1,
    "keep_hot": 0,
}
_TOML_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
    (datetime.datetime, "a date-time"),
    (datetime.date, "a date"),
    (datetime.time, "a time"),
)
_WANTED: dict[str, tuple[type | tuple[type, ...], str]] = {
    "string": (str, "a string"),
    "boolean": (bool, "a boolean"),
    "integer": (int, "an integer"),
    "number": ((int, float), "a number"),
    "array": (list, "an array"),
    "table": (dict, "a table"),
}

P = ParamSpec("P")
R = TypeVar("R")


def parse_duration(value: object) -> float:
    """
    Seconds from a number or a string such as C{"500ms"}, C{"30s"}, C{"15m"},
    C{"2h"}, C{"7d"}; L{ValueError} otherwise.
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is not None:
            number, unit = match.groups()
            seconds = float(number) / 1000 if unit == "ms" else float(number) * _UNIT_SECONDS[unit]
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"not a duration: {value!r} ({_DURATION_HINT})")
    if seconds < 0:
        raise ValueError(f"a duration may not be negative: {value!r}")
    return seconds


def read_bytes(path: str) -> bytes:
    """The bytes of a file (the configuration file, C{file:} secrets, warm files)."""
    with open(path, "rb") as f:
        return f.read()


def load_config(
    path: str | None,
    environ: Mapping[str, str],
    *,
    read_file: Callable[[str], bytes] = read_bytes,
) -> Config:
    """
    Read and validate the configuration file at C{path}; with C{None}, read
    C{./refresherd.toml} if it exists, else return the built-in defaults.
    Raise L{ConfigError} with one line on any mistake.

    C{environ} resolves C{env:} secrets; C{read_file} reads the configuration
    file and C{file:} secrets (tests replace it).
    """
    file = DEFAULT_PATH if path is None else path
    try:
        data = read_file(file)
    except FileNotFoundError:
        if path is None:
            return Config(source="<defaults>")
        raise ConfigError(f"{file}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{file}: cannot read: {e.strerror or e}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(one_line(f"{file}: {e}")) from None
    root = _Table(file, "", document, environ, read_file)
    root.only({"server", "store", "auth", "jobs"})
    config = Config(
        source=file,
        server=_server(root.table("server")),
        store=_store(root.table("store")),
        auth=_auth(root.table("auth")),
        jobs=_jobs(root.table("jobs")),
    )
    for name, job in config.jobs.items():
        if job.keep_hot > config.server.hot_keys:
            raise ConfigError(
                f"{file}: jobs.{name}.keep_hot: {job.keep_hot} is more than the hot keys "
                f"kept per job (server.hot_keys = {config.server.hot_keys})"
            )
    return config


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    """What TOML calls the type of C{value}, with its article."""
    for python_type, name in _TOML_KINDS:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _fields(cls: type) -> set[str]:
    return {field.name for field in attrs.fields(cls)}


@attrs.frozen(repr=False)
class _Table:
    """
    One TOML table being read, with its dotted path for error messages and
    what resolves secrets.  Validators raise L{ValueError} with what is wrong;
    L{_Table.check} turns that into a L{ConfigError} naming file and key.
    No repr: its data holds literal secrets.
    """

    file: str
    path: str
    data: Mapping[str, Any]
    environ: Mapping[str, str]
    read_file: Callable[[str], bytes]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str | None, what: str) -> ConfigError:
        where = self.path if key is None else _join(self.path, key)
        return ConfigError(
            one_line(f"{self.file}: {where}: {what}" if where else f"{self.file}: {what}")
        )

    def check(
        self, key: str | None, validate: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """The result of C{validate(*args)}, its L{ValueError} reported at C{key}."""
        try:
            return validate(*args, **kwargs)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def only(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(None, f"unknown key {key!r}{hint}")

    def get(self, key: str, wanted: str) -> Any:
        python_type, name = _WANTED[wanted]
        value = self.data[key]
        if (isinstance(value, bool) and python_type is not bool) or not isinstance(
            value, python_type
        ):
            raise self.error(key, f"must be {name}, not {_kind(value)}")
        return value

    def table(self, key: str) -> _Table:
        data = self.get(key, "table") if key in self.data else {}
        return attrs.evolve(self, path=_join(self.path, key), data=data)

    def items(self, key: str, wanted: str) -> list[tuple[str, Any]]:
        """The elements of the array C{key}, each with its key for errors, type checked."""
        elements = {f"{key}[{i}]": v for i, v in enumerate(self.get(key, "array"))}
        array = attrs.evolve(self, data=elements)
        return [(k, array.get(k, wanted)) for k in elements]

    def integer(self, key: str, minimum: int) -> int:
        value: int = self.get(key, "integer")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        return value

    def number(self, key: str, minimum: float) -> float:
        value = float(self.get(key, "number"))
        if not math.isfinite(value) or value < minimum:
            raise self.error(key, f"must be a number of at least {minimum}, not {self.data[key]!r}")
        return value

    def duration(self, key: str, positive: bool = False) -> float:
        seconds = self.check(key, parse_duration, self.data[key])
        if positive and seconds == 0:
            raise self.error(key, f"must be more than 0 seconds, not {self.data[key]!r}")
        return seconds

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value: str = self.get(key, "string")
        if value not in choices:
            wanted = " or ".join(f'"{c}"' for c in choices)
            raise self.error(key, f"must be {wanted}, not {value!r}")
        return value

    def name(self, key: str) -> str:
        value: str = self.get(key, "string")
        if not _NAME.fullmatch(value):
            raise self.error(key, f"not a valid name: {value!r} ({_NAME_HINT})")
        return value

    def secret(self, key: str, text: str) -> Secret:
        """The secret C{text} (a literal, C{env:NAME} or C{file:/path}) resolved."""
        return self.check(key, self._resolve, text)

    def _resolve(self, text: str) -> Secret:
        # Never put the value in a message: only the variable's name or the path.
        if text.startswith("env:"):
            name = text[len("env:") :]
            if not name:
                raise ValueError('"env:" needs the name of an environment variable')
            if name not in self.environ:
                raise ValueError(f"environment variable {name!r} is not set")
            return Secret(self.environ[name], "env")
        if text.startswith("file:"):
            path = text[len("file:") :]
            if not path:
                raise ValueError('"file:" needs a path')
            try:
                data = self.read_file(path)
            except OSError as e:
                raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
            try:
                return Secret(data.decode("utf-8").strip(), "file")
            except UnicodeDecodeError:
                raise ValueError(f"{path!r} is not UTF-8 text") from None
        return Secret(text, "literal")


def _server(t: _Table) -> ServerConfig:
    t.only(_fields(ServerConfig))
    values: dict[str, Any] = {}
    for key in ("listen", "admin_listen"):
        if key in t:
            values[key] = t.get(key, "string")
    for key in ("max_body_bytes", "max_batch", "max_connections"):
        if key in t:
            values[key] = t.integer(key, 1)
    if "max_connections_per_address" in t:
        values["max_connections_per_address"] = t.integer("max_connections_per_address", 0)
    if "head_timeout" in t:
        values["head_timeout"] = t.duration("head_timeout", positive=True)
    if "access_log" in t:
        values["access_log"] = t.get("access_log", "boolean")
    if "hot_keys" in t:
        values["hot_keys"] = t.integer("hot_keys", 0)
        if values["hot_keys"] > MAX_HOT_KEYS:
            raise t.error("hot_keys", f"must be at most {MAX_HOT_KEYS}, not {values['hot_keys']}")
    if "hot_half_life" in t:
        values["hot_half_life"] = t.duration("hot_half_life", positive=True)
    return ServerConfig(**values)


def _store(t: _Table) -> StoreConfig:
    t.only(_fields(StoreConfig))
    values: dict[str, Any] = {}
    if "url" in t:
        values["url"] = t.get("url", "string")
    if "namespace" in t:
        values["namespace"] = t.name("namespace")
    return StoreConfig(**values)


def _auth(t: _Table) -> AuthConfig:
    t.only(_fields(AuthConfig))
    values: dict[str, tuple[Secret, ...]] = {}
    for key in _fields(AuthConfig):
        if key in t:
            values[key] = tuple(_token(t, k, text) for k, text in t.items(key, "string"))
    return AuthConfig(**values)


def _token(t: _Table, key: str, text: str) -> Secret:
    secret = t.secret(key, text)
    if not secret.value:
        raise t.error(key, f"the token is empty ({secret.source})")
    if not _TOKEN.fullmatch(secret.value):
        raise t.error(key, "a token may hold only printable ASCII, no white space")
    return secret


def _jobs(t: _Table) -> dict[str, JobConfig]:
    jobs = {}
    for name in t.data:
        if not _NAME.fullmatch(name):
            raise t.error(None, f"not a valid job name: {name!r} ({_NAME_HINT})")
        jobs[name] = _job(t.table(name), name)
    return jobs


def _job(t: _Table, name: str) -> JobConfig:
    t.only(_fields(JobConfig) - {"name", "url_secret"} | {"warm_file"})
    if "fresh" not in t:
        raise t.error(None, "missing required key 'fresh'")
    args = _args(t)
    values: dict[str, Any] = {"name": name, "args": args, "fetch": _fetch_kind(t)}
    if values["fetch"] == "http":
        values.update(_http(t, args))
    else:
        values.update(_python(t))
    if "arg_patterns" in t:
        values["arg_patterns"] = _arg_patterns(t.table("arg_patterns"), args)
    if "tags" in t:
        values["tags"] = tuple(
            t.check(key, _tag, tag, args) for key, tag in t.items("tags", "string")
        )
        if len(values["tags"]) > MAX_JOB_TAGS:
            raise t.error("tags", f"at most {MAX_JOB_TAGS} tags")
    for key in _DURATIONS:
        if key in t:
            values[key] = t.duration(key, positive=key in _POSITIVE_DURATIONS)
    for key, minimum in _INT_MINIMUMS.items():
        if key in t:
            values[key] = t.integer(key, minimum)
    if "early_refresh" in t:
        values["early_refresh"] = t.number("early_refresh", 0)
    if "on_miss" in t:
        values["on_miss"] = t.choice("on_miss", ("wait", "empty"))
    if "writable" in t:
        values["writable"] = t.get("writable", "boolean")
    job = JobConfig(**values)
    if "warm" in t or "warm_file" in t:
        job = attrs.evolve(job, warm=_warm(t, job))
    return job


def _warm(t: _Table, job: JobConfig) -> tuple[Mapping[str, str], ...]:
    """
    The argument sets of C{warm} (an array of tables) and C{warm_file} (JSON
    lines), each checked as a request's arguments are, each once; at most
    L{MAX_WARM} in all.
    """
    given: list[tuple[str, Any]] = []
    if "warm" in t:
        given += t.items("warm", "table")
    if "warm_file" in t:
        given += _warm_lines(t, t.get("warm_file", "string"))
    sets: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}
    for where, args in given:
        try:
            checked = check_args(job, args)
        except BadArgs as e:
            raise t.error(where, e.message) from None
        sets.setdefault(tuple(sorted(checked.items())), checked)
        if len(sets) > MAX_WARM:
            raise t.error(where, f"more than {MAX_WARM} argument sets to warm (warm and warm_file)")
    return tuple(sets.values())


def _warm_lines(t: _Table, path: str) -> list[tuple[str, Any]]:
    """
    The argument sets of a C{warm_file}, one JSON object a line (blank lines
    and lines starting with C{#} skipped), each with where it is for errors;
    a relative C{path} is relative to the configuration file's directory.
    """
    full = os.path.join(os.path.dirname(t.file), path)
    try:
        data = t.read_file(full)
    except OSError as e:
        raise t.error("warm_file", f"cannot read {full!r}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise t.error("warm_file", f"{full!r} is not UTF-8 text") from None
    sets: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"warm_file: {full} line {number}"
        try:
            args = json.loads(line, parse_constant=_no_constant)
        except ValueError as e:
            raise t.error(where, f"not a JSON object: {e}") from None
        if not isinstance(args, dict):
            raise t.error(where, f"must be a JSON object of arguments, not {_kind(args)}")
        sets.append((where, args))
        if len(sets) > MAX_WARM:
            raise t.error(where, f"more than {MAX_WARM} argument sets to warm (warm and warm_file)")
    return sets


def _args(t: _Table) -> tuple[str, ...]:
    if "args" not in t:
        return ()
    names: list[str] = []
    for key, name in t.items("args", "string"):
        if not _ARG_NAME.fullmatch(name):
            raise t.error(key, f"not a valid argument name: {name!r} ([A-Za-z_][A-Za-z0-9_]*)")
        if name in names:
            raise t.error(key, f"argument {name!r} is declared twice")
        names.append(name)
    return tuple(names)


def _fetch_kind(t: _Table) -> str:
    if "fetch" in t:
        return t.choice("fetch", ("http", "python"))
    if "url" in t and "callable" in t:
        raise t.error(None, 'has both url and callable; set fetch = "http" or "python"')
    if "url" in t:
        return "http"
    if "callable" in t:
        return "python"
    raise t.error(None, 'needs url (fetch = "http") or callable (fetch = "python")')


def _http(t: _Table, args: tuple[str, ...]) -> dict[str, Any]:
    if "callable" in t:
        raise t.error("callable", "not allowed for an http job")
    if "url" not in t:
        raise t.error(None, "missing required key 'url' (an http job)")
    url = t.secret("url", t.get("url", "string"))
    values: dict[str, Any] = {
        "url": t.check("url", _url, url.value, args),
        "url_secret": url.redacted,
    }
    if "path_slash" in t:
        values["path_slash"] = t.get("path_slash", "boolean")
    if "method" in t:
        method = t.get("method", "string").upper()
        if method not in ("GET", "POST"):
            raise t.error("method", f'must be "GET" or "POST", not {t.data["method"]!r}')
        values["method"] = method
    if "body" in t:
        if values.get("method") != "POST":
            raise t.error("body", 'only allowed with method = "POST"')
        values["body"] = t.check("body", _body, t.data["body"], args)
    if "headers" in t:
        values["headers"] = _headers(t.table("headers"))
    if "sign" in t:
        values["sign"] = t.secret("sign", t.get("sign", "string"))
        if not values["sign"].value:
            raise t.error("sign", f"the signing secret is empty ({values['sign'].source})")
    if "freshness" in t:
        values["freshness"] = t.choice("freshness", ("job", "origin"))
    if "max_fresh" in t:
        if values.get("freshness") != "origin":
            raise t.error("max_fresh", 'only allowed with freshness = "origin"')
        values["max_fresh"] = t.duration("max_fresh", positive=True)
        fresh = t.duration("fresh", positive=True)
        if values["max_fresh"] < fresh:
            raise t.error("max_fresh", f"must be at least fresh ({t.data['fresh']!r})")
    return values


def _python(t: _Table) -> dict[str, Any]:
    for key in _HTTP_ONLY:
        if key in t:
            raise t.error(key, "not allowed for a python job")
    if "callable" not in t:
        raise t.error(None, "missing required key 'callable' (a python job)")
    target: str = t.get("callable", "string")
    module, colon, attribute = target.partition(":")
    parts = module.split(".") + attribute.split(".")
    if not colon or not all(part.isidentifier() for part in parts):
        raise t.error("callable", f"must be 'package.module:attribute', not {target!r}")
    return {"callable": target}


def _declared(names: list[str], args: tuple[str, ...]) -> None:
    for name in names:
        if name not in args:
            raise ValueError(f"placeholder {{{name}}} is not one of the job's args {list(args)}")


def _url(url: str, args: tuple[str, ...]) -> str:
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("contains white space or a control character")
    check_url_template(url)
    _declared(placeholders(url), args)
    return url


def _tag(tag: str, args: tuple[str, ...]) -> str:
    if not tag:
        raise ValueError("a tag may not be empty")
    if any(c in "{}" for c in PLACEHOLDER.sub("", tag)):
        raise ValueError(f"has a '{{' or '}}' that is not a {{name}} placeholder: {tag!r}")
    _declared(placeholders(tag), args)
    return tag


def _body(body: Any, args: tuple[str, ...]) -> Any:
    if isinstance(body, str):
        try:
            body = json.loads(body, parse_constant=_no_constant)
        except ValueError as e:
            raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(body, (dict, list)):
        raise ValueError(
            "must be a JSON object or array: a TOML table or array, or a string of JSON text"
        )
    _check_json(body)
    _declared(json_placeholders(body), args)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_json(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _check_json(item)
    elif isinstance(value, list):
        for item in value:
            _check_json(item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"holds {value!r}, which JSON cannot")
    elif value is not None and not isinstance(value, (str, int, float)):
        raise ValueError(f"holds {_kind(value)}, which JSON cannot")


def _headers(t: _Table) -> dict[str, Secret]:
    headers: dict[str, Secret] = {}
    seen: set[str] = set()
    for name in t.data:
        if not _HEADER_NAME.fullmatch(name):
            raise t.error(None, f"not a valid header name: {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise t.error(name, "this header is set by refresherd itself")
        if name.lower() in seen:
            raise t.error(name, "this header is given twice (header names ignore case)")
        seen.add(name.lower())
        secret = t.secret(name, t.get(name, "string"))
        if _CONTROL.search(secret.value):
            raise t.error(name, "a header value may not hold a line break or control character")
        headers[name] = secret
    return headers


def _arg_patterns(t: _Table, args: tuple[str, ...]) -> dict[str, ArgPattern]:
    patterns = {}
    for name in t.data:
        if name not in args:
            raise t.error(name, f"not one of the job's args {list(args)}")
        pattern: str = t.get(name, "string")
        patterns[name] = t.check(name, compile_pattern, pattern)
    return patterns
