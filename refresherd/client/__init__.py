"""
A small synchronous client of refresherd (docs/clients.md, "The Python
client"), for web applications of any framework, scripts and C{refresherctl}.

    from refresherd.client import Client

    client = Client("http://127.0.0.1:8080", token="...", timeout=2.0)
    answer = client.get("tweets", username="bob")      # the value with its metadata
    tweets = client.value("tweets", username="bob", default=[])
    sidebar = client.raw("sidebar", user_id=42)         # the stored body itself
    client.put("motd", "Hello")                         # a write token; motd: writable = true
    client.purge(tags=["user:42"], soft=True)           # a write token may purge tags

It speaks to both listeners over kept-alive C{http.client} connections, a
small pool per listener (safe to share between threads,
L{refresherd.client.transports}), with a timeout on every request, sends the bearer token when
it has one, and turns every failure into a L{RefresherdClientError}:
L{Unreachable} when the service cannot be reached or does not answer in time,
a L{ServiceError} subclass per error code (docs/README.md, "Errors") when it answers
with an error object.

Reads (L{Client.get}, L{Client.get_many}, L{Client.raw}, L{Client.value})
take a C{default}: given, it is returned instead of raising when refresherd
is down (unreachable, or answering 5xx), so that a page renders without it.
Errors of 4xx (an unknown job, bad arguments, a bad token) always raise: they
are bugs, not outages.  A short circuit breaker per listener makes a client
that failed to reach refresherd several times in a row fail at once for a few
seconds, so that a service that is down does not add a timeout to every page.

L{AsyncClient} is the same client for asyncio: the same methods, each a
coroutine (C{await client.get(...)}), over HTTP/1.1 on asyncio streams.

This package is the client side: it imports nothing of the server.  It logs
with the standard library's C{logging} (logger C{refresherd.client}), since it
runs inside applications that are not Twisted programs.

Its modules, one a job (import their names from the package itself):
L{refresherd.client.urls} checks base URLs, L{refresherd.client.errors} has
the error classes and reads the service's error object,
L{refresherd.client.answers} decodes answers and values,
L{refresherd.client.breaker} is the circuit breaker,
L{refresherd.client.calls} each method's request and how its answer is read
(no I/O: what both clients share), L{refresherd.client.transports} and
L{refresherd.client.http11} the ways to the service, and
C{refresherd.client._client} and C{refresherd.client._async} the L{Client}
and the L{AsyncClient}.
"""

from refresherd.client._async import AsyncClient, AsyncHTTPTransport, AsyncTransport
from refresherd.client._client import Client
from refresherd.client.answers import Raw, answer_value, is_text_type
from refresherd.client.breaker import (
    DEFAULT_CIRCUIT_COOLDOWN,
    DEFAULT_CIRCUIT_FAILURES,
    CircuitBreaker,
)
from refresherd.client.calls import (
    DEFAULT_ADMIN_URL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    ArgValue,
    BatchItem,
    JobArgs,
)
from refresherd.client.errors import (
    ERRORS,
    MAX_MESSAGE,
    STATUSES,
    BadArgs,
    BadJson,
    BadRequest,
    BadResponse,
    BatchTooLarge,
    BodyTooLarge,
    CircuitOpen,
    FetchFailed,
    Forbidden,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    Pending,
    RefresherdClientError,
    ReloadRefused,
    ReloadRunning,
    ReloadUnsupported,
    ServiceError,
    StoreUnavailable,
    Unauthorized,
    UnknownJob,
    Unreachable,
    UnsupportedMediaType,
    UriTooLong,
    WaitTimeout,
    service_error,
)
from refresherd.client.transports import HTTPTransport, HttpxTransport, Transport
from refresherd.client.urls import check_base_url, display_url

__all__ = [
    "ArgValue",
    "AsyncClient",
    "AsyncHTTPTransport",
    "AsyncTransport",
    "BadArgs",
    "BadJson",
    "BadRequest",
    "BadResponse",
    "BatchItem",
    "BatchTooLarge",
    "BodyTooLarge",
    "CircuitBreaker",
    "CircuitOpen",
    "Client",
    "DEFAULT_ADMIN_URL",
    "DEFAULT_CIRCUIT_COOLDOWN",
    "DEFAULT_CIRCUIT_FAILURES",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ERRORS",
    "FetchFailed",
    "Forbidden",
    "HTTPTransport",
    "HeadersTooLarge",
    "HttpxTransport",
    "JobArgs",
    "MAX_MESSAGE",
    "MethodNotAllowed",
    "NotFound",
    "Overloaded",
    "Pending",
    "Raw",
    "RefresherdClientError",
    "ReloadRefused",
    "ReloadRunning",
    "ReloadUnsupported",
    "STATUSES",
    "ServiceError",
    "StoreUnavailable",
    "Transport",
    "Unauthorized",
    "UnknownJob",
    "Unreachable",
    "UnsupportedMediaType",
    "UriTooLong",
    "WaitTimeout",
    "answer_value",
    "check_base_url",
    "display_url",
    "is_text_type",
    "service_error",
]
