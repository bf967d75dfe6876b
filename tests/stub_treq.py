"""
treq's C{StubTreq}, with its methods declared: it sets treq's functions on
each instance in C{__init__} (bound to an C{HTTPClient} over the resource),
where a type checker cannot see them.

    stub = StubTreq(resource)
    d = stub.get("http://127.0.0.1:8080/healthz")
    stub.flush()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from treq import testing
from treq.response import _Response
from twisted.internet.defer import Deferred
from twisted.web.resource import IResource


class StubTreq(testing.StubTreq):
    """C{treq.testing.StubTreq}; its requests answer treq's responses."""

    request: Callable[..., Deferred[_Response]]
    """C{request(method, url, **kwargs)}: L{treq.client.HTTPClient.request}."""
    get: Callable[..., Deferred[_Response]]
    post: Callable[..., Deferred[_Response]]
    put: Callable[..., Deferred[_Response]]
    delete: Callable[..., Deferred[_Response]]
    head: Callable[..., Deferred[_Response]]
    flush: Callable[[], None]
    """Deliver what the resource has answered so far."""

    def __init__(self, resource: IResource, site: Callable[[Any], Any] | None = None) -> None:
        """
        C{site}, if given, makes the server's factory from the in-memory
        reactor in place of twisted.web's C{Site} (L{WireSite}: the public
        listener's llhttp channel).
        """
        super().__init__(resource)
        if site is not None:
            agent: Any = self._agent
            agent._serverFactory = site(agent._memoryReactor)
