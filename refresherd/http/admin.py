"""
The admin API (docs/admin.md): purges, entries, the configured jobs,
refreshes on demand, C{/metrics} and the operator's page; on the admin
listener, or mounted on the public one with C{--admin-listen none}.

Every route but the operator's page's files needs an admin token (a purge of
keys and tags also takes a write token), unless no admin token is configured:
the routes are then open, and start-up makes sure they are served on loopback
only.  Admin POSTs need a JSON content type, and without admin tokens a
loopback C{Host} (or a UNIX socket), so that a web page cannot make an
operator's browser forge them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
from klein import Klein
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from refresherd import __version__
from refresherd.config import JobConfig, Secret
from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.marks import Purge
from refresherd.core.recent import Tally
from refresherd.core.refresher import Refresher
from refresherd.entry import Entry, is_json_content_type, parse_json
from refresherd.errors import (
    BadArgs,
    BadJson,
    BatchTooLarge,
    FetchFailed,
    Forbidden,
    NotFound,
    RefresherdError,
    ReloadUnsupported,
    StoreUnavailable,
    UnknownJob,
    UnsupportedMediaType,
    one_line,
    public_reason,
)
from refresherd.http.auth import ADMIN, METRICS, Authorizer, is_loopback_host
from refresherd.http.common import JSON, guarded, handle_errors, header, observe, query, with_value
from refresherd.http.page import HEADERS, Asset, PageFiles, load_page
from refresherd.http.query import parse_query
from refresherd.http.status import StoreStatus, status_json
from refresherd.interfaces import IHoldsEntries
from refresherd.metrics import Metrics

REDACTED = "<redacted>"

SHOWN_HEADERS = frozenset(
    {"accept", "accept-encoding", "accept-language", "content-type", "user-agent"}
)
"""The headers whose literal values C{GET /v1/jobs} shows; every other value is redacted."""
_ONLY_PLACEHOLDERS = re.compile(r"(\{[A-Za-z_][A-Za-z0-9_]*\})+")
MAX_TAG_BYTES = 1024
MAX_PURGE_NAMES = 1000
"""The keys, jobs and tags one purge may name in all (each is a write to the store)."""
MAX_WARM_SETS = 100
"""The argument sets one C{POST /v1/jobs/{job}/warm} may name."""
READY_TIMEOUT = 1.0
"""Seconds C{GET /v1/status} waits for the store to answer before it says it is not ready."""


@attrs.frozen
class PurgeRequest:
    keys: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    soft: bool = False


def parse_purge(body: bytes) -> PurgeRequest:
    """The body of C{POST /v1/purge}; L{BadJson} or L{BadArgs} saying what is wrong."""
    try:
        document = parse_json(body)
    except ValueError as e:
        raise BadJson(one_line(f"the body is not valid JSON: {e}")) from None
    if not isinstance(document, dict):
        raise BadJson('the body must be an object {"keys": [...], "jobs": [...], "tags": [...]}')
    unknown = sorted(set(document) - {"keys", "jobs", "tags", "soft"})
    if unknown:
        raise BadJson(f"unknown field {unknown[0][:40]!r}; use keys, jobs, tags and soft")
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("keys", "jobs", "tags"):
        items = document.get(name, [])
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise BadJson(f"{name} must be an array of non-empty strings")
        lists[name] = tuple(dict.fromkeys(items))
    named = sum(len(names) for names in lists.values())
    if named > MAX_PURGE_NAMES:
        raise BatchTooLarge(
            f"a purge names at most {MAX_PURGE_NAMES} keys, jobs and tags in all; "
            f"this one names {named}: send several"
        )
    soft = document.get("soft", False)
    if not isinstance(soft, bool):
        raise BadJson("soft must be true or false")
    if not any(lists.values()):
        raise BadArgs("nothing to purge: name keys, jobs or tags")
    for tag in lists["tags"]:
        if len(tag.encode("utf-8")) > MAX_TAG_BYTES:
            raise BadArgs(f"a tag is at most {MAX_TAG_BYTES} bytes")
    return PurgeRequest(soft=soft, **lists)


def parse_warm(body: bytes) -> list[Any]:
    """
    The argument sets of C{POST /v1/jobs/{job}/warm} (each checked later, on
    its own); L{BadJson}, L{BadArgs} or L{BatchTooLarge} saying what is wrong.
    """
    try:
        document = parse_json(body)
    except ValueError as e:
        raise BadJson(one_line(f"the body is not valid JSON: {e}")) from None
    if not isinstance(document, dict) or not isinstance(document.get("args"), list):
        raise BadJson('the body must be an object {"args": [{...}, ...]}')
    unknown = sorted(set(document) - {"args"})
    if unknown:
        raise BadJson(f"unknown field {unknown[0][:40]!r}; the only one is args")
    sets: list[Any] = document["args"]
    if not sets:
        raise BadArgs("nothing to warm: args is empty")
    if len(sets) > MAX_WARM_SETS:
        raise BatchTooLarge(
            f"a warm names at most {MAX_WARM_SETS} argument sets; "
            f"this one names {len(sets)}: send several"
        )
    return sets


async def warm_one(refresher: Refresher, job: str, args: Any) -> dict[str, Any]:
    """
    Refresh one argument set of C{job} unless its value is fresh (in the
    background: C{warm}), and say how it went: C{fresh}, C{done},
    C{not_stored} or C{failed} with the error's code and message.
    """
    key = None
    try:
        if not isinstance(args, dict):
            raise BadArgs("an argument set must be an object of argument names to values")
        target = refresher.target(job, args)
        key = target.key
        answer = await refresher.refresh_background(target, "warm")
    except RefresherdError as e:
        return {"key": key, "result": "failed", "error": e.message, "code": e.code}
    entry = answer.entry
    if answer.status == "miss":
        return {"key": key, "result": "done" if answer.stored else "not_stored"}
    if answer.status == "stale" and entry is not None and entry.failures:
        # Refreshes of this value fail: the next is not due yet (its backoff).
        reason = public_reason(entry.last_error or "")
        return {"key": key, "result": "failed", "error": reason, "code": FetchFailed.code}
    return {"key": key, "result": "fresh"}


def entry_json(key: str, entry: Entry, purge: Purge | None, value: bool) -> bytes:
    """The metadata of an entry (C{GET /v1/entries/{key}}), with its value if asked."""
    head: dict[str, Any] = {
        "key": key,
        "job": entry.job,
        "args": dict(entry.args),
        "fetched_at": entry.fetched_at,
        "fresh_until": entry.fresh_until,
        "stale_until": entry.stale_until,
        "size": entry.size(),
        "content_type": entry.content_type,
        "tags": list(entry.tags),
        "last_error": entry.last_error,
        "failures": entry.failures,
        "has_value": not entry.is_failure,
        "error_until": entry.error_until,
        "retry_at": entry.retry_at,
        "etag": entry.etag,
        "purged": None if purge is None else purge.value,
        "lifetimes": dict(entry.lifetimes),
        "validators": {
            "etag": entry.validators[0] or None,
            "last_modified": entry.validators[1] or None,
        },
    }
    if value and not entry.is_failure:
        return with_value(head, entry)
    return json.dumps(head).encode("utf-8")


def redact_url(url: str, secret: bool = False) -> str:
    """
    C{url} without its secrets: credentials become L{REDACTED}, and so does
    every query value that is not just placeholders; for a C{secret} URL
    (given as C{env:} or C{file:}) every path segment and the fragment too.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    path, fragment = parts.path, parts.fragment
    if secret:
        path = "/".join(_redact_text(segment) for segment in path.split("/"))
        fragment = fragment and REDACTED
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, equals, value = pair.partition("=")
        if equals:
            value = _redact_text(value)
        pairs.append(name + equals + value)
    return urlunsplit((parts.scheme, netloc, path, "&".join(pairs), fragment))


def _redact_text(text: str) -> str:
    """L{REDACTED} unless C{text} (of a URL) is empty or just placeholders."""
    return text if not text or _ONLY_PLACEHOLDERS.fullmatch(text) else REDACTED


def _header_value(name: str, secret: Secret) -> str:
    shown = not secret.redacted and name.lower() in SHOWN_HEADERS
    return secret.value if shown else REDACTED


def _redact_body(template: Any) -> Any:
    """A body template with every string that is not just placeholders redacted."""
    if isinstance(template, str):
        return template if _ONLY_PLACEHOLDERS.fullmatch(template) else REDACTED
    if isinstance(template, dict):
        return {key: _redact_body(value) for key, value in template.items()}
    if isinstance(template, list):
        return [_redact_body(item) for item in template]
    return template


def describe_job(job: JobConfig) -> dict[str, Any]:
    """
    A job as C{GET /v1/jobs} shows it, secrets redacted: the signing secret,
    header values (but the literals of L{SHOWN_HEADERS}), credentials and
    query values in the URL (and its path, given as C{env:} or C{file:}), and
    the literal strings of a body template.
    """
    shown: dict[str, Any] = {
        "name": job.name,
        "fetch": job.fetch,
        "args": list(job.args),
        "arg_patterns": {name: p.text for name, p in job.arg_patterns.items()},
    }
    if job.fetch == "http":
        assert job.url is not None
        shown.update(
            url=redact_url(job.url, job.url_secret),
            path_slash=job.path_slash,
            method=job.method,
            headers={name: _header_value(name, value) for name, value in job.headers.items()},
            body=_redact_body(job.body),
            sign=REDACTED if job.sign is not None else None,
            freshness=job.freshness,
            max_fresh=job.max_fresh if job.max_fresh is not None else job.fresh,
        )
    else:
        shown["callable"] = job.callable
    for name in (
        "fresh",
        "stale",
        "stale_if_error",
        "error_ttl",
        "on_miss",
        "wait_timeout",
        "timeout",
        "retries",
        "concurrency",
        "max_queue",
        "version",
        "early_refresh",
        "min_refresh",
        "keep_hot",
        "max_value_bytes",
        "writable",
    ):
        shown[name] = getattr(job, name)
    shown["tags"] = list(job.tags)
    shown["warm"] = len(job.warm)  # how many argument sets: the list may be 10,000 long
    return shown


def describe_jobs(jobs: Mapping[str, JobConfig]) -> bytes:
    return json.dumps({"jobs": [describe_job(jobs[name]) for name in sorted(jobs)]}).encode()


MAX_HOT_N = 10_000
"""The largest C{n} of C{GET /v1/hot} (the largest C{hot_keys})."""


def parse_hot_query(
    args: dict[str, str], configured: Mapping[str, object]
) -> tuple[list[str], int | None]:
    """
    The jobs (C{job}, default every configured one) and how many keys of each
    (C{n}, default all the sketch keeps) C{GET /v1/hot} asks for.
    """
    job, n = args.pop("job", None), args.pop("n", None)
    if args:
        raise BadArgs(f"unknown parameter {sorted(args)[0][:40]!r}; use job and n")
    if job is not None and job not in configured:
        raise UnknownJob(f"no job named {job[:64]!r}")
    if n is not None and not (
        n.isascii() and n.isdigit() and len(n) <= 5 and 1 <= int(n) <= MAX_HOT_N
    ):
        raise BadArgs(f"n must be a whole number from 1 to {MAX_HOT_N}")
    return ([job] if job is not None else sorted(configured)), None if n is None else int(n)


def hot_json(registry: HotKeysRegistry, jobs: list[str], now: float, n: int | None) -> bytes:
    """C{GET /v1/hot}: the hottest keys of each of C{jobs} at C{now}, highest rate first."""
    shown = {
        job: [
            {"key": hot.key, "args": dict(hot.args), "rate": hot.rate, "error": hot.error}
            for hot in registry.top(job, now, n)
        ]
        for job in jobs
    }
    return json.dumps({"jobs": shown}).encode("utf-8")


@attrs.define(slots=False)
class AdminAPI:
    """The routes of the admin listener."""

    refresher: Refresher
    authorizer: Authorizer
    metrics: Metrics
    clock: IReactorTime
    access_log: bool = False
    hot_keys: Callable[[], HotKeysRegistry] = attrs.field(
        default=lambda: HotKeysRegistry(0), kw_only=True
    )
    """
    The hot keys C{GET /v1/hot} shows: the process's (L{Engine.hot}), merged
    with the workers' in the parent of C{--workers}.
    """
    store_kind: str = attrs.field(default="memory", kw_only=True)
    """The kind of store, as C{GET /v1/status} shows it."""
    tallies: Callable[[], Mapping[str, Tally]] | None = attrs.field(default=None, kw_only=True)
    """
    What each job did over the last minute (C{GET /v1/status}): the
    process's (None: L{Metrics.tallies}), merged with the workers' in the
    parent of C{--workers}.
    """
    started: float | None = attrs.field(default=None, kw_only=True)
    """When the service started (None: when L{metrics} began counting)."""
    page_files: PageFiles = attrs.field(factory=load_page, kw_only=True)
    """The operator's page: its HTML and the files it loads (L{refresherd.http.page})."""
    reload: Callable[[], Deferred[dict[str, Any]]] | None = attrs.field(default=None, kw_only=True)
    """Reloads the configuration (C{POST /v1/reload}); None: this process cannot."""
    app = Klein()

    handle_errors(
        app, lambda face: face.metrics, lambda face: face.clock, access_log=lambda f: f.access_log
    )

    def resource(self) -> Any:
        return guarded(self.app.resource())

    def _admin(self, request: IRequest, route: str, writers_too: bool = False) -> None:
        """
        What every admin route needs: a token that may use it, and, with no
        admin token configured, a loopback C{Host} (or a UNIX socket), so that
        a web page on another name (DNS rebinding) can neither read nor write.
        """
        observe(self.metrics, self.clock, request, route, self.access_log)
        self.authorizer.check_admin(header(request, b"Authorization"), writers_too)
        self._loopback(request)

    def _page(self, request: IRequest, route: str, asset: Asset | None) -> bytes:
        """
        One file of the operator's page.  It needs no token (it holds no
        secret, and a browser loads it before the operator types one; the
        admin routes it calls do), but with no admin token configured, a
        loopback C{Host} as every admin route, so that no other site can
        serve it to the operator by DNS rebinding.
        """
        observe(self.metrics, self.clock, request, route, self.access_log)
        for name, value in HEADERS:
            request.setHeader(name, value)
        self._loopback(request)
        if asset is None:
            raise NotFound("no such file of the operator's page")
        request.setHeader(b"Content-Type", asset.content_type)
        return asset.body

    def _loopback(self, request: IRequest) -> None:
        """With no admin token configured: a loopback C{Host}, or a UNIX socket."""
        if (
            self.authorizer.admin_open
            and not isinstance(request.getHost(), UNIXAddress)
            and not is_loopback_host(header(request, b"Host"))
        ):
            raise Forbidden(
                "with no admin token configured, admin requests need a loopback Host header"
            )

    def _post(self, request: IRequest) -> None:
        """What every admin POST needs besides, so that a web page cannot forge one."""
        content_type = (header(request, b"Content-Type") or b"").decode("latin-1")
        if not is_json_content_type(content_type):
            raise UnsupportedMediaType("admin requests need Content-Type: application/json")

    @app.route("/v1/purge", methods=["POST"])
    async def purge(self, request: IRequest) -> bytes:
        self._admin(request, "/v1/purge", writers_too=True)
        self._post(request)
        wanted = parse_purge(request.content.read())
        if wanted.jobs:
            self.authorizer.check_admin(header(request, b"Authorization"))
        purged = await self.refresher.purge(
            list(wanted.keys), list(wanted.jobs), list(wanted.tags), wanted.soft
        )
        request.setHeader(b"Content-Type", JSON)
        return json.dumps({"purged": purged}).encode()

    @app.route("/v1/entries/<path:key>", methods=["GET", "HEAD"])
    async def entry(self, request: IRequest, key: str) -> bytes:
        self._admin(request, "/v1/entries/{key}")
        # The key comes from the raw path, percent-decoded exactly once.
        raw = request.path[len(b"/v1/entries/") :]
        try:
            name = unquote(raw.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise BadArgs("the key must be percent-encoded ASCII") from None
        args = parse_query(query(request))
        value = args.pop("value", None)
        if args or value not in (None, "0", "1"):
            raise BadArgs("the only parameter is value=1")
        entry, purge = await self.refresher.inspect(name)
        request.setHeader(b"Content-Type", JSON)
        return entry_json(name, entry, purge, value == "1")

    @app.route("/v1/jobs", methods=["GET", "HEAD"])
    def jobs(self, request: IRequest) -> bytes:
        self._admin(request, "/v1/jobs")
        request.setHeader(b"Content-Type", JSON)
        return describe_jobs({name: job.config for name, job in self.refresher.jobs.items()})

    @app.route("/v1/jobs/<job>/refresh", methods=["POST"])
    async def refresh(self, request: IRequest, job: str) -> bytes:
        self._admin(request, "/v1/jobs/{job}/refresh")
        self._post(request)
        key = await self.refresher.refresh(self.refresher.target(job, parse_query(query(request))))
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", JSON)
        return json.dumps({"job": job, "key": key, "status": "pending"}).encode()

    @app.route("/v1/jobs/<job>/key", methods=["GET", "HEAD"])
    def key(self, request: IRequest, job: str) -> bytes:
        self._admin(request, "/v1/jobs/{job}/key")
        key = self.refresher.target(job, parse_query(query(request))).key
        request.setHeader(b"Content-Type", JSON)
        return json.dumps({"job": job, "key": key}).encode()

    @app.route("/", methods=["GET", "HEAD"])
    def page(self, request: IRequest) -> bytes:
        return self._page(request, "/", self.page_files.index)

    @app.route("/ui/<asset>", methods=["GET", "HEAD"])
    def page_file(self, request: IRequest, asset: str) -> bytes:
        return self._page(request, "/ui/{asset}", self.page_files.files.get(asset))

    @app.route("/v1/hot", methods=["GET", "HEAD"])
    def hot(self, request: IRequest) -> bytes:
        self._admin(request, "/v1/hot")
        jobs, n = parse_hot_query(parse_query(query(request)), self.refresher.jobs)
        registry = self.hot_keys()
        now = self.clock.seconds()
        request.setHeader(b"Content-Type", JSON)
        return hot_json(registry, jobs, now, n)

    @app.route("/v1/status", methods=["GET", "HEAD"])
    async def status(self, request: IRequest) -> bytes:
        self._admin(request, "/v1/status")
        if parse_query(query(request)):
            raise BadArgs("/v1/status takes no parameter")
        store = await self._store_status()
        tallies = (self.tallies or self.metrics.tallies)()
        started = self.metrics.recent.started if self.started is None else self.started
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Cache-Control", b"no-store")
        return status_json(
            version=__version__,
            now=self.clock.seconds(),
            started=started,
            store=store,
            jobs=self.refresher.jobs,
            tallies=tallies,
        )

    async def _store_status(self) -> StoreStatus:
        """The store's kind, whether it answers (within L{READY_TIMEOUT}), and its size if known."""
        store = self.refresher.store
        try:
            await store.ping().addTimeout(READY_TIMEOUT, self.clock)
            ready = True
        except (StoreUnavailable, TimeoutError):
            ready = False
        if IHoldsEntries.providedBy(store):
            return StoreStatus(self.store_kind, ready, store.used_bytes, store.entry_count())
        return StoreStatus(self.store_kind, ready)

    @app.route("/v1/jobs/<job>/warm", methods=["POST"])
    async def warm(self, request: IRequest, job: str) -> bytes:
        self._admin(request, "/v1/jobs/{job}/warm")
        self._post(request)
        self.refresher.targets.job(job)  # unknown_job before anything
        sets = parse_warm(request.content.read())
        results = await gatherResults(
            [Deferred.fromCoroutine(warm_one(self.refresher, job, args)) for args in sets]
        )
        request.setHeader(b"Content-Type", JSON)
        return json.dumps({"job": job, "results": results}).encode()

    @app.route("/v1/reload", methods=["POST"])
    async def reload_config(self, request: IRequest) -> bytes:
        self._admin(request, "/v1/reload")
        self._post(request)
        if self.reload is None:
            raise ReloadUnsupported("this process does not reload its configuration")
        reloaded = await self.reload()
        request.setHeader(b"Content-Type", JSON)
        return json.dumps(reloaded).encode()

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: IRequest) -> bytes:
        observe(self.metrics, self.clock, request, "/metrics", self.access_log)
        if self.authorizer.configured([METRICS]):
            self.authorizer.require(header(request, b"Authorization"), frozenset({METRICS, ADMIN}))
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.render()
