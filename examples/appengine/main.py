"""
A minimal App Engine (standard environment, Python 3) app that reads
refresherd over plain HTTP: no client library, only the standard library.

  GET /?base=EUR   exchange rates: the JSON answer of GET /v1/jobs/rates?base=EUR
  GET /banner      an HTML snippet: the stored body of GET /v1/jobs/banner/raw

Everything refresherd asks of a caller is here: a GET with the job's
arguments as query parameters, a bearer token, a timeout, and a fallback when
refresherd is down (unreachable, or a 5xx such as 504 wait_timeout); a 4xx
(unknown job, bad arguments, bad token) is a bug and fails the request.

Configuration (app.yaml): REFRESHERD_URL, REFRESHERD_TOKEN (a read token),
REFRESHERD_TIMEOUT (seconds, default 2).
"""

import html
import json
import os
import urllib.error
import urllib.parse
import urllib.request


class Unavailable(Exception):
    """refresherd is down or has no value yet: show the fallback."""


def refresherd(job, args, raw=False):
    """
    The answer of refresherd for C{job} with C{args}: the JSON object of
    GET /v1/jobs/{job} or, with C{raw}, the stored body and its content type.
    L{Unavailable} for an outage or a value still pending.
    """
    base = os.environ.get("REFRESHERD_URL", "http://127.0.0.1:8080").rstrip("/")
    path = "/v1/jobs/" + urllib.parse.quote(job, safe="") + ("/raw" if raw else "")
    url = base + path + ("?" + urllib.parse.urlencode(args) if args else "")
    headers = {"Accept": "*/*" if raw else "application/json"}
    token = os.environ.get("REFRESHERD_TOKEN")
    if token:
        headers["Authorization"] = "Bearer " + token
    timeout = float(os.environ.get("REFRESHERD_TIMEOUT", "2"))
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            body = r.read()
            if r.status == 202:
                raise Unavailable(f"{job}: pending")
            if raw:
                return body, r.headers.get("Content-Type", "application/octet-stream")
            return json.loads(body)
    except urllib.error.HTTPError as e:
        # Every error is {"error": {"code": ..., "message": ...}}.
        try:
            error = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": f"http_{e.code}", "message": e.reason}
        if e.code >= 500:
            raise Unavailable(f"{job}: {error['code']}") from None
        message = f"refresherd {job}: {e.code} {error['code']}: {error['message']}"
        raise RuntimeError(message) from None
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"{job}: {e}") from None


def rates_page(query):
    base = query.get("base", ["EUR"])[0]
    try:
        answer = refresherd("rates", {"base": base})
    except Unavailable:
        return "<p>The rates are not available right now.</p>"
    rates = answer["value"].get("rates", {})
    rows = "".join(
        f"<tr><td>{html.escape(code)}</td><td>{html.escape(str(rate))}</td></tr>"
        for code, rate in sorted(rates.items())
    )
    note = " (stale)" if answer["status"] == "stale" else ""
    return f"<h1>1 {html.escape(base)}{note}</h1><table>{rows}</table>"


def banner_page(query):
    try:
        body, content_type = refresherd("banner", {}, raw=True)
    except Unavailable:
        return "<p>Welcome!</p>"
    # Our own pre-rendered HTML, from a job whose content we trust.
    return body.decode("utf-8", errors="replace")


ROUTES = {"/": rates_page, "/banner": banner_page}


def app(environ, start_response):
    """The WSGI application (App Engine runs it with gunicorn: see app.yaml)."""
    page = ROUTES.get(environ.get("PATH_INFO", "/"))
    if page is None:
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found"]
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    content = page(query).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(content)))],
    )
    return [content]
