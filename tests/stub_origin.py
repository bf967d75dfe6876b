"""
An origin for the HTTP fetcher's tests: a twisted.web resource answering every
path with a handler and recording what it received, served in memory through
treq's StubTreq (tests/unit/test_fetch_http.py) or by a real server
(tests/integration/test_fetch_http.py).  Plus the http job they fetch with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from refresherd.config import JobConfig

Handler = Callable[[Request], bytes | int]


def make_job(**overrides: Any) -> JobConfig:
    fields: dict[str, Any] = {
        "name": "items",
        "fresh": 60.0,
        "fetch": "http",
        "args": ("id",),
        "url": "http://origin.test/items/{id}",
    }
    fields.update(overrides)
    return JobConfig(**fields)


@attrs.define
class Seen:
    """One request as the origin received it."""

    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes
    host: bytes | None


class Origin(Resource):
    """An origin answering every path with C{handler}, recording what it saw."""

    isLeaf = True

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.seen: list[Seen] = []
        self.lost: list[Failure] = []
        self.requests: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.seen.append(
            Seen(
                method=request.method,
                uri=request.uri,
                headers={k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
                body=request.content.read(),
                host=request.getHeader(b"host"),
            )
        )
        self.requests.append(request)
        request.notifyFinish().addErrback(self.lost.append)
        return self.handler(request)


def answer(
    code: int = 200, body: bytes = b"ok", content_type: bytes | None = b"text/plain"
) -> Handler:
    def handler(request: Request) -> bytes:
        request.setResponseCode(code)
        if content_type is None:
            request.defaultContentType = None
        else:
            request.setHeader(b"content-type", content_type)
        return body

    return handler


def pending(request: Request) -> int:
    """A handler that answers later, through C{origin.requests}."""
    return NOT_DONE_YET
