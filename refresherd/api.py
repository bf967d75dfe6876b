"""
The public HTTP API (SPEC section 5): parse, authorize, ask the refresher,
render.  Every error a client can cause is a L{RefresherdError} rendered as
the JSON error object; anything else is logged and answered with a JSON 500,
never a traceback.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import weakref
from typing import Any
from urllib.parse import unquote

import attrs
from klein import Klein
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from refresherd.args import parse_query
from refresherd.auth import Authorizer
from refresherd.config import ServerConfig
from refresherd.entry import Entry, is_json_content_type, parse_json
from refresherd.errors import BadArgs, BadJson, BatchTooLarge, RefresherdError, one_line
from refresherd.faces import (
    JSON,
    guarded,
    handle_errors,
    observe,
    render_error,
    render_unexpected,
    with_value,
)
from refresherd.faces import header as _header
from refresherd.faces import query as _query
from refresherd.metrics import Metrics
from refresherd.refresher import Answer, Refresher

OPENAPI = importlib.resources.files("refresherd").joinpath("openapi.json").read_bytes()
"""The OpenAPI 3 description of the whole API, public and admin (C{refresherd/openapi.json})."""


def cache_status(answer: Answer, now: float) -> bytes:
    """The RFC 9211 C{Cache-Status} of an answer."""
    entry = answer.entry
    if answer.status == "pending" or entry is None:
        return b"refresherd; fwd=miss"
    if answer.status == "miss":
        return b"refresherd; fwd=miss; stored" if answer.stored else b"refresherd; fwd=miss"
    return b"refresherd; hit; ttl=%d" % math.floor(entry.fresh_until - now)


def etag_matches(if_none_match: bytes | None, etag: str) -> bool:
    """Weak comparison of C{If-None-Match} with the current ETag."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.decode("latin-1").split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def answer_body(answer: Answer, now: float) -> bytes:
    """The JSON object of an answer.  A JSON value is spliced in as stored."""
    head: dict[str, Any] = {"job": answer.job, "key": answer.key, "status": answer.status}
    entry = answer.entry
    if entry is None:
        return json.dumps(head).encode("utf-8")
    head.update(
        content_type=entry.content_type,
        fetched_at=entry.fetched_at,
        fresh_until=entry.fresh_until,
        stale_until=entry.stale_until,
        age=round(max(0.0, now - entry.fetched_at), 3),
    )
    if answer.error is not None:
        head["error"] = one_line(answer.error)
    return with_value(head, entry)


BODIES_KEPT = 4096
"""How many answer heads L{Bodies} keeps (all are forgotten when more come)."""


@attrs.define
class Bodies:
    """
    L{answer_body}, faster for the answers nearly all traffic is, a JSON
    value with no error: their bytes before C{age}, which change only with
    the entry, are kept per key and status while the entry is the same
    (held weakly: a value the store has let go of is not kept alive here).
    The same JSON, with C{age} written with three decimals (C{10.500}).
    """

    _kept: dict[tuple[str, str], tuple[weakref.ref[Entry], bytes]] = attrs.field(factory=dict)

    def body(self, answer: Answer, now: float) -> bytes:
        entry = answer.entry
        if entry is None or answer.error is not None:
            return answer_body(answer, now)
        memo = (answer.key, answer.status)
        kept = self._kept.get(memo)
        if kept is None or kept[0]() is not entry:
            if not is_json_content_type(entry.content_type):
                return answer_body(answer, now)
            if len(self._kept) >= BODIES_KEPT:
                self._kept.clear()
            kept = self._kept[memo] = (weakref.ref(entry), _head(answer, entry))
        age = now - entry.fetched_at
        return b'%s%.3f,"value":%s}' % (kept[1], age if age > 0 else 0.0, entry.body or b"")


def _head(answer: Answer, entry: Entry) -> bytes:
    """The bytes of L{answer_body} up to the value of C{age}."""
    head = {
        "job": answer.job,
        "key": answer.key,
        "status": answer.status,
        "content_type": entry.content_type,
        "fetched_at": entry.fetched_at,
        "fresh_until": entry.fresh_until,
        "stale_until": entry.stale_until,
    }
    return json.dumps(head).encode("utf-8")[:-1] + b', "age": '


@attrs.define(slots=False)
class PublicAPI:
    """The routes of the public listener."""

    refresher: Refresher
    authorizer: Authorizer
    server: ServerConfig
    metrics: Metrics
    clock: IReactorTime
    fallback: IResource | None = None
    """Routes mounted beside these (the admin API with C{--admin-listen none})."""
    bodies: Bodies = attrs.field(factory=Bodies)
    app = Klein()

    def resource(self) -> Any:
        return _FastValues(self, guarded(self.app.resource()))

    def body_limit(self, method: bytes, path: bytes) -> int:
        """How large a request body may be: a PUT to a job may send up to its C{max_value_bytes}."""
        if method.upper() == b"PUT" and path.startswith(b"/v1/jobs/"):
            name = unquote(path[len(b"/v1/jobs/") :].partition(b"?")[0].decode("latin-1"))
            job = self.refresher.jobs.get(name)
            if job is not None:
                return job.config.max_value_bytes
        return self.server.max_body_bytes

    # -- plumbing --------------------------------------------------------------

    handle_errors(
        app,
        lambda face: face.metrics,
        lambda face: face.clock,
        lambda face: face.fallback,
        lambda face: face.server.access_log,
    )

    def _observe(self, request: IRequest, route: str) -> None:
        observe(self.metrics, self.clock, request, route, self.server.access_log)

    async def _lookup(self, job: str, args: dict[str, Any]) -> Answer:
        try:
            answer = await self.refresher.lookup(job, args)
        except RefresherdError:
            self.metrics.count_request(job, "error")
            raise
        self.metrics.count_request(job, answer.status)
        return answer

    # -- routes ------------------------------------------------------------------

    @app.route("/v1/jobs/<job>", methods=["GET", "HEAD"])
    def get_value(self, request: IRequest, job: str) -> bytes | Deferred[bytes]:
        return self.value(request, job, raw=False)

    @app.route("/v1/jobs/<job>/raw", methods=["GET", "HEAD"])
    def get_raw(self, request: IRequest, job: str) -> bytes | Deferred[bytes]:
        return self.value(request, job, raw=True)

    def value(self, request: IRequest, job: str, raw: bool) -> bytes | Deferred[bytes]:
        """
        The answer to C{GET /v1/jobs/{job}} (or C{.../raw}), errors rendered
        as their error object: bytes at once when the value was at hand (the
        memory store, the near cache) and nobody waits, else a Deferred.
        """
        self._observe(request, "/v1/jobs/{job}/raw" if raw else "/v1/jobs/{job}")
        if not self.authorizer.reads_open:  # (else no header to read)
            try:
                self.authorizer.check_read(_header(request, b"Authorization"))
            except RefresherdError as e:
                return render_error(request, e)
            except Exception:
                return render_unexpected(request, Failure())
        try:
            answer = self.refresher.lookup_now(job, _query(request))
        except Exception:
            return self._failed(request, job, Failure())
        if isinstance(answer, Answer):
            return self._respond(request, job, answer, raw)
        return answer.addCallbacks(
            lambda answer: self._respond(request, job, answer, raw),
            lambda failure: self._failed(request, job, failure),
        )

    def _respond(self, request: IRequest, job: str, answer: Answer, raw: bool) -> bytes:
        self.metrics.count_request(job, answer.status)
        if raw:
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            request.setHeader(b"Content-Security-Policy", b"sandbox")
        return self._render(request, answer, raw=raw)

    def _failed(self, request: IRequest, job: str, failure: Failure) -> bytes:
        """A lookup's failure as its answer: the error object, or a JSON 500."""
        if isinstance(failure.value, RefresherdError):
            self.metrics.count_request(job, "error")
            return render_error(request, failure.value)
        return render_unexpected(request, failure)

    def _render(
        self, request: IRequest, answer: Answer, raw: bool, conditional: bool = True
    ) -> bytes:
        now = self.clock.seconds()
        request.setHeader(b"Cache-Status", cache_status(answer, now))
        entry = answer.entry
        if entry is None:
            request.setResponseCode(202)
            request.setHeader(b"Content-Type", JSON)
            return answer_body(answer, now)
        request.setHeader(b"Age", b"%d" % max(0, math.floor(now - entry.fetched_at)))
        request.setHeader(b"ETag", entry.etag.encode("ascii"))
        if conditional and etag_matches(_header(request, b"If-None-Match"), entry.etag):
            request.setResponseCode(304)
            return b""
        if raw:
            request.setHeader(b"Content-Type", entry.content_type.encode("latin-1"))
            return entry.body or b""
        request.setHeader(b"Content-Type", JSON)
        return self.bodies.body(answer, now)

    @app.route("/v1/jobs/<job>", methods=["PUT"])
    async def put_value(self, request: IRequest, job: str) -> bytes:
        self._observe(request, "/v1/jobs/{job}")
        self.authorizer.check_write(_header(request, b"Authorization"))
        args = parse_query(_query(request))
        content_type = request.getHeader(b"Content-Type") or b"application/octet-stream"
        body = request.content.read()
        answer = await self.refresher.put(job, args, body, content_type.decode("latin-1"))
        # Never a 304: the value was written, and a PUT answers what a GET now would.
        return self._render(request, answer, raw=False, conditional=False)

    @app.route("/v1/fetch", methods=["POST"])
    async def fetch_many(self, request: IRequest) -> bytes:
        self._observe(request, "/v1/fetch")
        self.authorizer.check_read(_header(request, b"Authorization"))
        items = self._batch_items(request.content.read())
        now_answers = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._batch_item(item)) for item in items]
        )
        now = self.clock.seconds()
        request.setHeader(b"Content-Type", JSON)
        return b'{"items":[' + b",".join(self._item_body(a, now) for a in now_answers) + b"]}"

    def _batch_items(self, body: bytes) -> list[Any]:
        try:
            document = parse_json(body)
        except ValueError as e:
            raise BadJson(one_line(f"the body is not valid JSON: {e}")) from None
        if not isinstance(document, dict) or not isinstance(document.get("items"), list):
            raise BadJson('the body must be an object {"items": [...]}')
        items = document["items"]
        if len(items) > self.server.max_batch:
            raise BatchTooLarge(f"a batch may hold at most {self.server.max_batch} items")
        return items

    async def _batch_item(self, item: Any) -> Answer | RefresherdError:
        try:
            if not isinstance(item, dict) or not isinstance(item.get("job"), str):
                raise BadArgs('each item must be an object {"job": ..., "args": {...}}')
            args = item.get("args", {})
            if not isinstance(args, dict):
                raise BadArgs("an item's args must be an object of strings")
            return await self._lookup(item["job"], args)
        except RefresherdError as e:
            return e

    def _item_body(self, answer: Answer | RefresherdError, now: float) -> bytes:
        if isinstance(answer, RefresherdError):
            return json.dumps(answer.to_json()).encode("utf-8")
        return self.bodies.body(answer, now)

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        self._observe(request, "/healthz")
        request.setHeader(b"Content-Type", JSON)
        return b'{"status":"ok"}'

    @app.route("/readyz", methods=["GET", "HEAD"])
    async def readyz(self, request: IRequest) -> bytes:
        self._observe(request, "/readyz")
        await self.refresher.store.ping()
        request.setHeader(b"Content-Type", JSON)
        return b'{"status":"ready"}'

    @app.route("/v1/openapi.json", methods=["GET", "HEAD"])
    def openapi(self, request: IRequest) -> bytes:
        self._observe(request, "/v1/openapi.json")
        self.authorizer.check_read(_header(request, b"Authorization"))
        request.setHeader(b"Content-Type", JSON)
        return OPENAPI


_JOBS = b"/v1/jobs/"
_RAW = b"/raw"
_NAME = re.compile(rb"[A-Za-z0-9_-]{1,64}")


class _FastValues(Resource):
    """
    C{GET} and C{HEAD} of C{/v1/jobs/{job}} and C{/v1/jobs/{job}/raw}, the
    requests nearly all traffic is, answered without Klein's routing and
    Deferred chain (which cost as much as the rest of a hit): synchronously
    when the value is at hand, with a C{Content-Length}.  Every other request,
    and any job name Klein would have to decode, goes to the Klein resource.
    """

    isLeaf = True

    def __init__(self, api: PublicAPI, other: IResource) -> None:
        super().__init__()
        self.api = api
        self.other = other

    def render(self, request: IRequest) -> Any:
        path: bytes = request.path
        if request.method in (b"GET", b"HEAD") and path.startswith(_JOBS):
            name = path[len(_JOBS) :]
            raw = name.endswith(_RAW)
            if raw:
                name = name[: -len(_RAW)]
            if _NAME.fullmatch(name):
                return self._answer(request, self.api.value(request, name.decode("ascii"), raw))
        return self.other.render(request)

    @staticmethod
    def _answer(request: IRequest, answering: bytes | Deferred[bytes]) -> Any:
        if isinstance(answering, bytes):
            return answering
        now: list[bytes] = []
        gone: list[object] = []
        later = False

        def deliver(body: bytes) -> None:
            if not later:
                now.append(body)
            elif not gone:
                request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
                request.write(body)
                request.finish()

        answering.addCallback(deliver)
        if now:
            return now[0]
        later = True
        finishing: Any = request
        finishing.notifyFinish().addErrback(gone.append)
        return NOT_DONE_YET
