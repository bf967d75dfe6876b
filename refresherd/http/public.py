"""
The public HTTP API (docs/README.md, "Answers"): parse, authorize, ask the
refresher, render.  A value's C{GET} and C{HEAD} are answered by
L{refresherd.http.fastpath}, whatever their route.  Every error a client can
cause is a L{RefresherdError} rendered as the JSON error object (docs/README.md,
"Errors"); anything else is logged and answered with a JSON 500, never a
traceback.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import attrs
from klein import Klein
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from refresherd.config import ServerConfig
from refresherd.core.jobs import Job
from refresherd.core.refresher import Answer, Refresher
from refresherd.entry import parse_json
from refresherd.errors import (
    BadArgs,
    BadJson,
    BatchTooLarge,
    Forbidden,
    RefresherdError,
    StoreUnavailable,
    one_line,
)
from refresherd.http.answers import etag_matches, render_answer
from refresherd.http.auth import Authorizer
from refresherd.http.common import (
    JSON,
    guarded,
    handle_errors,
    header,
    observe,
    query,
)
from refresherd.http.fastpath import QuickValues, Values
from refresherd.http.query import parse_query
from refresherd.metrics import Metrics

_log = Logger()

OPENAPI = importlib.resources.files("refresherd").joinpath("openapi.json").read_bytes()
"""The OpenAPI 3 description of the whole API, public and admin (C{refresherd/openapi.json})."""


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
    store_kind: str = "memory"
    """The kind of store (L{refresherd.run.wiring.store_kind}), told by C{/v1/layout}."""
    values: Values = attrs.field(init=False)
    _layout: tuple[object, int, bytes, bytes] | None = attrs.field(init=False, default=None)
    """The jobs and C{max_batch} C{/v1/layout} was made of, its body and its ETag (made
    again after a reload)."""
    app = Klein()

    def __attrs_post_init__(self) -> None:
        self.values = Values(
            self.refresher, self.authorizer, self.metrics, self.clock, self.server.access_log
        )

    def resource(self) -> Any:
        """
        The routes (a value's C{GET}/C{HEAD} too, through twisted.web: the
        public listener's channel answers those with L{quick} first).
        """
        return guarded(self.app.resource())

    def quick(self) -> QuickValues:
        """What answers a value's C{GET}/C{HEAD} on the public listener before L{resource}."""
        return QuickValues(self.values)

    def body_limit(self, method: bytes, path: bytes) -> int:
        """
        How large a request body may be: a PUT to a writable job up to its
        C{max_value_bytes}, anything else C{max_body_bytes} (so that a PUT to a
        job that refuses it is not read past that before its 403).
        """
        if method.upper() == b"PUT" and path.startswith(b"/v1/jobs/"):
            name = unquote(path[len(b"/v1/jobs/") :].partition(b"?")[0].decode("latin-1"))
            job = self.refresher.jobs.get(name)
            if job is not None and job.config.writable:
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
            answering = self.refresher.lookup(self.refresher.target(job, args))
            answer = answering if isinstance(answering, Answer) else await answering
        except RefresherdError:
            self.metrics.count_request(job, "error")
            raise
        self.metrics.count_request(job, answer.status)
        return answer

    # -- routes ------------------------------------------------------------------

    @app.route("/v1/jobs/<job>", methods=["GET", "HEAD"])
    def get_value(self, request: IRequest, job: str) -> bytes | Deferred[bytes]:
        return self.values.value(request, job, raw=False)

    @app.route("/v1/jobs/<job>/raw", methods=["GET", "HEAD"])
    def get_raw(self, request: IRequest, job: str) -> bytes | Deferred[bytes]:
        return self.values.value(request, job, raw=True)

    @app.route("/v1/jobs/<job>", methods=["PUT"])
    async def put_value(self, request: IRequest, job: str) -> bytes:
        self._observe(request, "/v1/jobs/{job}")
        self.authorizer.check_write(header(request, b"Authorization"))
        configured = self.refresher.jobs.get(job)
        if configured is not None and not configured.config.writable:
            raise Forbidden(
                f"job {job!r} is not writable: set writable = true in [jobs.{job}] to allow PUT"
            )
        target = self.refresher.target(job, parse_query(query(request)))
        content_type = request.getHeader(b"Content-Type") or b"application/octet-stream"
        body = request.content.read()
        answer = await self.refresher.put(target, body, content_type.decode("latin-1"))
        # Never a 304: the value was written, and a PUT answers what a GET now would.
        now = self.clock.seconds()
        return render_answer(request, answer, False, now, self.values.bodies, conditional=False)

    @app.route("/v1/fetch", methods=["POST"])
    async def fetch_many(self, request: IRequest) -> bytes:
        self._observe(request, "/v1/fetch")
        self.authorizer.check_read(header(request, b"Authorization"))
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
        items: list[Any] = document["items"]
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
        return self.values.bodies.body(answer, now)

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        self._observe(request, "/healthz")
        request.setHeader(b"Content-Type", JSON)
        return b'{"status":"ok"}'

    @app.route("/readyz", methods=["GET", "HEAD"])
    async def readyz(self, request: IRequest) -> bytes:
        self._observe(request, "/readyz")
        try:
            await self.refresher.store.ping()
        except StoreUnavailable as e:
            # The reason names hosts, ports and the server's own words: for the log only.
            _log.warn("/readyz: the store does not answer: {reason}", reason=str(e))
            raise StoreUnavailable("the store does not answer") from None
        request.setHeader(b"Content-Type", JSON)
        return b'{"status":"ready"}'

    @app.route("/v1/layout", methods=["GET", "HEAD"])
    def get_layout(self, request: IRequest) -> bytes:
        self._observe(request, "/v1/layout")
        self.authorizer.check_read(header(request, b"Authorization"))
        jobs, max_batch = self.refresher.jobs, self.server.max_batch
        made = self._layout
        if made is None or made[0] is not jobs or made[1] != max_batch:
            document = layout(self.refresher.namespace, jobs, self.store_kind, max_batch)
            body = json.dumps(document, sort_keys=True).encode("utf-8")
            etag = f'"{document["generation"]}"'.encode("ascii")
            made = self._layout = (jobs, max_batch, body, etag)
        _, _, body, etag = made
        request.setHeader(b"ETag", etag)
        request.setHeader(b"Cache-Control", b"no-cache")
        if etag_matches(header(request, b"If-None-Match"), etag.decode("ascii")):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Type", JSON)
        return body

    @app.route("/v1/openapi.json", methods=["GET", "HEAD"])
    def openapi(self, request: IRequest) -> bytes:
        self._observe(request, "/v1/openapi.json")
        self.authorizer.check_read(header(request, b"Authorization"))
        request.setHeader(b"Content-Type", JSON)
        return OPENAPI


LAYOUT_FORMAT = 1
"""The version of the document C{GET /v1/layout} answers (docs/clients.md, "Direct reads")."""


def layout(
    namespace: str, jobs: Mapping[str, Job], store_kind: str, max_batch: int
) -> dict[str, Any]:
    """
    What a client needs to read hits straight from the store (docs/clients.md,
    "Direct reads"): the store's kind and namespace, and per job what makes
    its keys and its generation keys, and what its decision takes; with a
    C{generation}, the digest of all that (and of C{max_batch}, the most items of
    a batch, which a client refuses as the service would).  A job with C{arg_patterns} is
    C{direct: false}: its arguments are checked by the service alone.
    """
    described = {
        name: {
            "version": job.config.version,
            "args": list(job.config.args),
            "tags": list(job.config.tags),
            "early_refresh": job.config.early_refresh,
            "max_value_bytes": job.config.max_value_bytes,
            "direct": not job.config.arg_patterns,
        }
        for name, job in sorted(jobs.items())
    }
    document: dict[str, Any] = {
        "format": LAYOUT_FORMAT,
        "store": store_kind,
        "namespace": namespace,
        "jobs": described,
        "max_batch": max_batch,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    document["generation"] = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
    return document
