"""
The implementations of L{refresherd.interfaces.IFetcher}, one module per
C{fetch} kind of SPEC section 3:

  - C{"http"}: L{refresherd.fetchers.http.HTTPFetcher}, which takes an HTTP
    client shared by every HTTP job (L{refresherd.fetchers.http.make_http_client});
  - C{"python"}: L{refresherd.fetchers.python.PythonFetcher}, which takes a
    thread pool of the job's own (L{refresherd.fetchers.python.make_threadpool}).

Only the twistd wiring (C{refresherd.tap}) builds them; the refresher sees
C{IFetcher} only.
"""

KINDS = ("http", "python")
"""The values C{fetch} may take in a job."""
