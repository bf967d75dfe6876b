"""
The implementations of L{refresherd.interfaces.IFetcher}, one module per
C{fetch} kind (docs/configuration.md, "`fetch`: how it is inferred"):

  - C{"http"}: L{refresherd.fetchers.http.HTTPFetcher}, which takes an HTTP
    client shared by every HTTP job (L{refresherd.fetchers.http.make_http_client});
  - C{"python"}: L{refresherd.fetchers.python.PythonFetcher}, which takes a
    thread pool of the job's own (L{refresherd.fetchers.python.make_threadpool}).

Only the wiring (C{refresherd.run.wiring}) builds them; the refresher sees
C{IFetcher} only.
"""

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from refresherd.entry import Fetched

KINDS = ("http", "python")
"""The values C{fetch} may take in a job."""


def abandonable(
    inner: Deferred[Fetched],
    to_error: Callable[[Failure], Exception],
    cancel_inner: bool = True,
) -> Deferred[Fetched]:
    """
    A Deferred that follows C{inner}, its failures turned into the
    L{FetchError} that C{to_error} makes of them, until it is cancelled: then
    it fails at once with C{CancelledError}, C{inner} is cancelled too (unless
    C{cancel_inner} is false: work in a thread cannot be stopped), and
    whatever C{inner} gives later is dropped.
    """
    cancelled = False

    def cancel(outer: Deferred[Fetched]) -> None:
        nonlocal cancelled
        cancelled = True
        if cancel_inner:
            inner.cancel()

    outer: Deferred[Fetched] = Deferred(cancel)

    def succeeded(fetched: Fetched) -> None:
        if not cancelled:
            outer.callback(fetched)

    def failed(reason: Failure) -> None:
        if not cancelled:
            outer.errback(to_error(reason))

    inner.addCallbacks(succeeded, failed)
    return outer
