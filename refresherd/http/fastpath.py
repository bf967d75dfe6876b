"""
C{GET} and C{HEAD} of C{/v1/jobs/{job}} and C{/v1/jobs/{job}/raw}, the
requests nearly all traffic is: L{Values} answers them on either route (Klein's
for twisted.web, L{QuickValues} on the public listener's channel, without
twisted.web's request or Klein's routing and Deferred chain, which cost as
much as the rest of a hit): synchronously when the value is at hand.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from refresherd.core.jobs import Target, Targets
from refresherd.core.refresher import Answer, Refresher
from refresherd.entry import Entry
from refresherd.errors import RefresherdError
from refresherd.http.answers import Bodies, render_answer
from refresherd.http.auth import Authorizer
from refresherd.http.common import header, observe, query, render_error, render_unexpected
from refresherd.http.query import parse_query
from refresherd.http.wire import QuickRequest
from refresherd.metrics import Metrics

TARGETS_KEPT = 4096
"""How many query strings L{QueryTargets} remembers (all are forgotten when more come)."""


@attrs.define
class QueryTargets:
    """
    The target of a job name and a URL's query string, remembered by the
    query's bytes (at most L{TARGETS_KEPT}), so that a hit parses nothing:
    L{UnknownJob} or L{BadArgs} if they name none (never remembered).
    """

    refresher: Refresher
    _kept: dict[tuple[str, bytes], Target] = attrs.field(factory=dict, init=False)
    _of: Targets | None = attrs.field(default=None, init=False)
    """The refresher's targets those kept were resolved by: a reload replaces them."""

    def target(self, job_name: str, raw_query: bytes) -> Target:
        if self._of is not self.refresher.targets:
            self._kept.clear()
            self._of = self.refresher.targets
        memo = (job_name, raw_query)
        target = self._kept.get(memo)
        if target is None:
            target = self.refresher.targets.resolve(job_name, parse_query(raw_query))
            if len(self._kept) >= TARGETS_KEPT:
                self._kept.clear()
            self._kept[memo] = target
        return target


@attrs.define
class Values:
    """The answers to C{GET}/C{HEAD} of a value, on whichever route they came."""

    refresher: Refresher
    authorizer: Authorizer
    metrics: Metrics
    clock: IReactorTime
    access_log: bool = False
    bodies: Bodies = attrs.field(factory=Bodies)
    targets: QueryTargets = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.targets = QueryTargets(self.refresher)

    def value(
        self,
        request: IRequest,
        job: str,
        raw: bool,
        known: Known | None = None,
        now: float | None = None,
    ) -> bytes | Deferred[bytes]:
        """
        The answer to C{GET /v1/jobs/{job}} (or C{.../raw}), errors rendered
        as their error object: bytes at once when the value was at hand (the
        memory store, the near cache) and nobody waits, else a Deferred.
        With C{known} (a L{QuickRequest} read before), its target and its
        last answer's head are reused while they are the same.  C{now}: when
        the request's answering began, if the caller read the clock then (a
        read of it less); an answer given at once is as of then.
        """
        if now is None:
            now = self.clock.seconds()
        route = "/v1/jobs/{job}/raw" if raw else "/v1/jobs/{job}"
        observe(self.metrics, self.clock, request, route, self.access_log, now)
        if not self.authorizer.reads_open:  # (else no header to read)
            try:
                self.authorizer.check_read(header(request, b"Authorization"))
            except RefresherdError as e:
                return render_error(request, e)
            except Exception:
                return render_unexpected(request, Failure())
        try:
            if known is None:
                target = self.targets.target(job, query(request))
            else:
                target = known.target(self.targets, request)
            answer = self.refresher.lookup(target, now)
        except Exception:
            return self._failed(request, job, Failure())
        if isinstance(answer, Answer):
            if known is not None and answer.status == "hit":
                return self._respond_known(request, job, answer, raw, known, now)  # type: ignore[arg-type]
            return self._respond(request, job, answer, raw, now)
        return answer.addCallbacks(
            lambda answer: self._respond(request, job, answer, raw),
            lambda failure: self._failed(request, job, failure),
        )

    def _respond(
        self, request: IRequest, job: str, answer: Answer, raw: bool, now: float | None = None
    ) -> bytes:
        """
        C{answer} rendered; should that raise (a bug), a JSON 500 and the
        error logged, so that every request gets an answer, later ones too.
        """
        self.metrics.count_request(job, answer.status)
        if raw:
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            request.setHeader(b"Content-Security-Policy", b"sandbox")
        try:
            now = self.clock.seconds() if now is None else now
            return render_answer(request, answer, raw, now, self.bodies)
        except Exception:
            for name in _ANSWER_HEADERS:
                request.responseHeaders.removeHeader(name)
            return render_unexpected(request, Failure())

    def _respond_known(
        self, request: QuickRequest, job: str, answer: Answer, raw: bool, known: Known, now: float
    ) -> bytes:
        """L{_respond} of a hit at C{now}, its head as written last time while it reads the same."""
        entry = answer.entry
        assert entry is not None
        date = request.channel.site.date(now)
        ttl = math.floor(entry.fresh_until - now)
        age = max(0, math.floor(now - entry.fetched_at))
        if known.entry() is entry and known.ttl == ttl and known.age == age and known.date == date:
            if known.code == 304 or raw:
                body = b"" if known.code == 304 else entry.body or b""
            else:
                try:
                    body = self.bodies.body(answer, now)
                except Exception:  # a bug: answered as _respond answers it
                    known.entry = _GONE
                    return self._respond(request, job, answer, raw, now)  # type: ignore[arg-type]
            self.metrics.count_request(job, "hit")
            request.head, request.code = known.head, known.code
            return body
        body = self._respond(request, job, answer, raw, now)  # type: ignore[arg-type]
        known.entry = _GONE
        if request.code in (200, 304) and not request.response.keys() - _KNOWN_HEADERS:
            known.showing = (entry, ttl, age, request.code)
            request.keep = known.keep
        return body

    def _failed(self, request: IRequest, job: str, failure: Failure) -> bytes:
        """
        A lookup's failure as its answer: the error object, or a JSON 500;
        nothing for a wait Klein cancelled because its caller went away.
        """
        if isinstance(failure.value, RefresherdError):
            self.metrics.count_request(job, "error")
            return render_error(request, failure.value)
        if isinstance(failure.value, CancelledError):
            return b""
        return render_unexpected(request, failure)


_ANSWER_HEADERS = (b"Cache-Status", b"Age", b"ETag")
"""What L{render_answer} may have set before it raised: they describe no error."""
_KNOWN_HEADERS = {
    b"cache-status",
    b"age",
    b"etag",
    b"content-type",
    b"x-content-type-options",
    b"content-security-policy",
}
"""The headers of a hit's answer, which depend on nothing but what L{Known} compares."""


def _GONE() -> None:
    """No entry."""


@attrs.define(eq=False)
class Known:
    """
    What the answers to one request read before (L{refresherd.http.wire.WireSite.known}:
    the same bytes) reuse: its route, its target (while the jobs are the same), and the
    head of the last hit it was answered (while the entry, the C{Date}, C{Age} and
    C{Cache-Status} C{ttl} it shows are the same).
    """

    job: str
    raw: bool
    _target: Target | None = None
    _of: Targets | None = None
    entry: Callable[[], Entry | None] = _GONE
    """The entry the head shows (held weakly: a value let go of is not kept alive here)."""
    ttl: int = 0
    age: int = 0
    date: bytes = b""
    code: int = 200
    head: bytes = b""
    showing: tuple[Entry, int, int, int] | None = None
    """The entry, C{ttl}, C{Age} and status the head being written shows, until it is kept."""

    def target(self, targets: QueryTargets, request: IRequest) -> Target:
        if self._target is None or self._of is not targets.refresher.targets:
            self._target = None  # (should resolving raise)
            self.entry = _GONE
            self._target = targets.target(self.job, query(request))
            self._of = targets.refresher.targets
        return self._target

    def keep(self, head: bytes, date: bytes) -> None:
        """The head written, with C{date}, of the answer that showed L{showing}."""
        assert self.showing is not None
        entry, self.ttl, self.age, self.code = self.showing
        self.entry, self.head, self.date, self.showing = weakref.ref(entry), head, date, None


_JOBS = b"/v1/jobs/"
_RAW = b"/raw"
_NAME = re.compile(rb"[A-Za-z0-9_-]{1,64}")


def value_route(path: bytes) -> tuple[str, bool] | None:
    """
    The job name of C{/v1/jobs/{job}} and whether it is C{.../raw}; None for
    any other path, or a name Klein would have to decode.
    """
    if not path.startswith(_JOBS):
        return None
    name = path[len(_JOBS) :]
    raw = name.endswith(_RAW)
    if raw:
        name = name[: -len(_RAW)]
    if _NAME.fullmatch(name):
        return name.decode("ascii"), raw
    return None


@attrs.define
class QuickValues:
    """
    C{GET}/C{HEAD} of a value on the public listener's L{WireChannel}, without
    twisted.web: L{Values} on a L{QuickRequest}, the answer written in one piece.
    """

    values: Values

    def answer(self, request: QuickRequest) -> bool:
        known = request.incoming.memo
        if known is None:
            route = value_route(request.path)
            if route is None:
                return False
            known = request.incoming.memo = Known(*route)
        answering = self.values.value(
            request,  # type: ignore[arg-type]
            known.job,
            known.raw,
            known,
            request.now,
        )
        if isinstance(answering, bytes):
            request.respond(answering, request.now)  # as of then, as its Age is
        else:
            answering.addCallback(request.respond)
        return True
