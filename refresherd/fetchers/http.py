"""
The C{fetch = "http"} fetcher: one request to the job's URL
(docs/configuration.md, "HTTP jobs").

The URL template is filled with the percent-encoded arguments, the request
carries the job's headers, a JSON body for C{POST} jobs and, for C{sign} jobs,
an C{X-Refresherd-Signature} header (L{refresherd.signing.sign}, imported here
as L{sign_request}).  The answer is a success only when its status is 2xx:
redirects are never followed.  The body is streamed and refused as soon as it
grows past the job's C{max_value_bytes} (or when its C{Content-Length}
announces more), and a JSON content type with a body that does not parse is a
failure.

Cancelling the L{Deferred} of L{HTTPFetcher.fetch} closes the connection, in
whichever phase the request is (connecting, waiting for headers or reading the
body); that is how the refresher's whole-attempt timeout works.

Every failure is a L{FetchError} with one line that never contains a header
value or the signing secret.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable, Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import attrs
from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import (
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from refresherd import __version__
from refresherd.config import JobConfig
from refresherd.core import http_caching
from refresherd.core.templates import render_json, render_url
from refresherd.entry import (
    NO_VALIDATORS,
    Fetched,
    check_json_body,
    content_type_problem,
    is_json_content_type,
)
from refresherd.errors import FetchError, one_line
from refresherd.fetchers import abandonable
from refresherd.interfaces import IFetcher
from refresherd.signing import SIGNATURE_HEADER
from refresherd.signing import sign as sign_request

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_CACHING_BYTES = 16384
"""
The most bytes of caching headers read from an answer (all the lines of
those L{http_caching.HEADERS} together); past it, none is: no validators,
and with C{freshness = "origin"} the answer is not stored.
"""
USER_AGENT = f"refresherd/{__version__}"
_WRAPPERS = (
    ResponseNeverReceived,
    ResponseFailed,
    RequestTransmissionFailed,
    RequestGenerationFailed,
)


class Requester(typing.Protocol):
    """
    What L{HTTPFetcher} needs of its client: the C{request} method of a treq
    L{HTTPClient} (or of L{treq.testing.StubTreq}).
    """

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Deferred[Any]: ...


def make_http_client(
    reactor: Any,
    *,
    pool: HTTPConnectionPool | None = None,
    connect_timeout: float = 10.0,
    max_persistent_per_host: int = 8,
) -> HTTPClient:
    """
    The production client of L{HTTPFetcher}: a treq L{HTTPClient} on a plain
    L{Agent} (which never follows redirects) with a persistent connection
    pool, and a cookie jar that keeps no cookies, so that one fetch never
    changes what the next one sends.

    @param reactor: The reactor (TCP, TLS, time and name resolution).
    @param pool: The connection pool, or L{None} for a new persistent one
        keeping up to C{max_persistent_per_host} idle connections per origin.
        Close it with C{pool.closeCachedConnections()} when shutting down.
    @param connect_timeout: Seconds to wait for a TCP connection; the
        refresher's per-attempt timeout still bounds the whole fetch.
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = max_persistent_per_host
    agent = Agent(reactor, pool=pool, connectTimeout=connect_timeout)
    jar = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=jar)


def _innermost(reason: Failure) -> BaseException:
    """The first cause of the wrapper errors of twisted.web.client."""
    error = reason.value
    while isinstance(error, _WRAPPERS) and error.reasons:
        error = error.reasons[0].value
    assert error is not None
    return error


def _plain(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _describe(reason: Failure) -> str:
    """One line saying why a request failed before its body was read."""
    error = _innermost(reason)
    if isinstance(error, ConnectionRefusedError):
        return one_line(f"connection refused: {error}")
    if isinstance(error, DNSLookupError):
        return one_line(str(error))
    if isinstance(error, ConnectTimeoutError):
        return one_line(f"connection timed out: {error}")
    if isinstance(error, ConnectError):
        return one_line(f"cannot connect: {error}")
    if isinstance(error, (ConnectionLost, ConnectionDone)):
        return "connection closed before the answer was complete"
    return one_line(f"request failed: {_plain(error)}")


def _to_fetch_error(reason: Failure) -> Exception:
    if isinstance(reason.value, FetchError):
        return reason.value
    return FetchError(_describe(reason))


def _describe_body_failure(reason: Failure) -> str:
    error = _innermost(reason)
    return one_line(f"connection lost while reading the body: {_plain(error)}")


class _BodyReader(Protocol):
    """
    Collects a response body of at most C{limit} bytes into C{finished}, and
    closes the connection at once when it grows larger or when C{finished} is
    cancelled.
    """

    def __init__(self, limit: int, announced: int | None) -> None:
        self._limit = limit
        self._announced = announced
        self._parts: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] | None = Deferred(self._cancel)

    def connectionMade(self) -> None:
        if self._announced is not None and self._announced > self._limit:
            self._fail(FetchError(f"body larger than {self._limit} bytes"))

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._fail(FetchError(f"body larger than {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._parts))
        else:
            finished.errback(FetchError(_describe_body_failure(reason)))

    def _fail(self, error: FetchError) -> None:
        finished, self.finished = self.finished, None
        self._parts = []
        self.abort()
        if finished is not None:
            finished.errback(error)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self.finished = None
        self._parts = []
        self.abort()

    def abort(self) -> None:
        """Close the connection the body comes on, if it is still open."""
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if callable(abort):
            abort()
        else:
            transport.loseConnection()


class _Discard(Protocol):
    """Takes the body of an answer we refuse, closing its connection at once."""

    def connectionMade(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.loseConnection()


@attrs.frozen
class OutgoingRequest:
    """A request as L{HTTPFetcher} sends it; C{path_qs} is what is signed."""

    method: str
    url: str
    path_qs: str
    headers: Headers
    body: bytes | None


@implementer(IFetcher)
@attrs.define
class HTTPFetcher:
    """
    Fetches the values of one C{fetch = "http"} job.

    @ivar job: The job.
    @ivar client: The HTTP client, normally from L{make_http_client} (shared
        by every HTTP job of the process); tests pass a
        L{treq.testing.StubTreq}.
    @ivar clock: The clock giving the signature's C{t}.
    @ivar random_bytes: Where the signature's nonce comes from:
        C{random_bytes(8)} gives its 16 hex characters.
    """

    job: JobConfig
    client: Requester
    clock: IReactorTime
    random_bytes: Callable[[int], bytes] = os.urandom

    def build_request(
        self, args: Mapping[str, str], validators: tuple[str, str] = NO_VALIDATORS
    ) -> OutgoingRequest:
        """
        The request for C{args}, exactly as it will be sent; conditional
        (C{If-None-Match}, C{If-Modified-Since}) with C{validators}.
        """
        job = self.job
        if job.url is None:
            raise ValueError(f"job {job.name!r} has no url")
        # The same normalisation treq applies, so that what is signed is what
        # is sent.
        url = EncodedURL.from_text(render_url(job.url, args)).to_uri().to_text()
        path_qs = URI.fromBytes(url.encode("ascii")).originForm.decode("ascii")
        method = job.method.upper()
        body: bytes | None = None
        headers = Headers()
        for name, secret in job.headers.items():
            headers.setRawHeaders(name, [secret.value])
        if not headers.hasHeader("user-agent"):
            headers.setRawHeaders("User-Agent", [USER_AGENT])
        etag, last_modified = validators
        if etag:
            headers.setRawHeaders("If-None-Match", [etag])
        if last_modified:
            headers.setRawHeaders("If-Modified-Since", [last_modified])
        if job.body is not None:
            body = json.dumps(render_json(job.body, args)).encode("utf-8")
            if not headers.hasHeader("content-type"):
                headers.setRawHeaders("Content-Type", ["application/json"])
        if job.sign is not None:
            nonce = self.random_bytes(8).hex()
            signature = sign_request(
                job.sign.value.encode("utf-8"),
                int(self.clock.seconds()),
                nonce,
                method,
                path_qs,
                body or b"",
            )
            headers.setRawHeaders(SIGNATURE_HEADER, [signature])
        return OutgoingRequest(method=method, url=url, path_qs=path_qs, headers=headers, body=body)

    def fetch(
        self, args: Mapping[str, str], validators: tuple[str, str] = NO_VALIDATORS
    ) -> Deferred[Fetched]:
        """
        One request for C{args}.  Fires with the L{Fetched} body and content
        type of a 2xx answer (and what its caching headers say), or with a
        C{not_modified} L{Fetched} for a 304 to a request made conditional
        by C{validators}; fails with L{FetchError}; cancelling it closes the
        connection and fails it with L{CancelledError}.
        """
        request = self.build_request(args, validators)
        kwargs: dict[str, Any] = {}
        if request.body is not None:
            kwargs["data"] = request.body
        try:
            requested: Deferred[Any] = self.client.request(
                request.method,
                request.url,
                headers=request.headers,
                allow_redirects=False,
                unbuffered=True,
                **kwargs,
            )
        except Exception as e:
            return fail(FetchError(one_line(f"request failed: {_plain(e)}")))
        return abandonable(requested.addCallback(self._read, any(validators)), _to_fetch_error)

    def _read(self, response: IResponse, conditional: bool) -> Deferred[Fetched] | Fetched:
        code = response.code
        if code == 304:
            response.deliverBody(Protocol())  # a 304 has no body
            if not conditional:
                raise FetchError("origin answered 304 to a request that was not conditional")
            return attrs.evolve(self._caching(response), not_modified=True)
        if not 200 <= code < 300:
            response.deliverBody(_Discard())
            if 300 <= code < 400:
                raise FetchError(f"origin answered {code} (redirects are not followed)")
            raise FetchError(f"origin answered {code}")
        raw = response.headers.getRawHeaders(b"content-type")
        content_type = raw[0].decode("latin-1").strip() if raw else ""
        content_type = content_type or DEFAULT_CONTENT_TYPE
        announced = None if response.length is UNKNOWN_LENGTH else int(response.length)
        reader = _BodyReader(self.job.max_value_bytes, announced)
        finished = reader.finished
        assert finished is not None
        response.deliverBody(reader)
        caching = self._caching(response)
        return finished.addCallback(_fetched, content_type).addCallback(
            lambda fetched: attrs.evolve(
                caching, body=fetched.body, content_type=fetched.content_type
            )
        )

    def _caching(self, response: IResponse) -> Fetched:
        """
        What the answer's headers say about caching it, as a L{Fetched} with
        no body: its validators always; with C{freshness = "origin"}, its
        windows (bounded by the job's), whether to store it and its tags.
        """
        job = self.job
        headers = _caching_headers(response.headers)
        if sum(len(line) for lines in headers.values() for line in lines) > MAX_CACHING_BYTES:
            # Not read (the parser's time grows with them): the safe reading.
            too_many = f"caching headers over {MAX_CACHING_BYTES} bytes"
            return Fetched(b"", "", no_store=too_many if job.freshness == "origin" else "")
        said = http_caching.parse(headers, self.clock.seconds())
        validators = (said.etag or "", said.last_modified or "")
        if job.freshness != "origin":
            return Fetched(b"", "", validators=validators)
        lifetimes = http_caching.lifetimes(
            said,
            fresh=job.fresh,
            max_fresh=job.max_fresh if job.max_fresh is not None else job.fresh,
            stale=job.stale,
            stale_if_error=job.stale_if_error,
        )
        return Fetched(
            b"",
            "",
            lifetimes=lifetimes,
            no_store=said.no_store,
            tags=said.tags,
            tags_dropped=said.tags_dropped,
            validators=validators,
        )


def _caching_headers(headers: Headers) -> dict[str, list[str]]:
    """The headers L{http_caching.parse} reads, lower-case names to their lines (Latin-1)."""
    return {
        name: [value.decode("latin-1") for value in values]
        for name in http_caching.HEADERS
        if (values := headers.getRawHeaders(name.encode("ascii")))
    }


def _fetched(body: bytes, content_type: str) -> Fetched:
    why = content_type_problem(content_type)
    if why is not None:
        raise FetchError(f"origin sent a Content-Type refresherd cannot store: {why}")
    if is_json_content_type(content_type):
        try:
            check_json_body(body)
        except ValueError as e:  # UnicodeDecodeError is a ValueError
            raise FetchError(one_line(f"body is not valid JSON: {e}")) from None
    return Fetched(body=body, content_type=content_type)
