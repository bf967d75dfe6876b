"""
A load generator for fault injection: a few clients, each a thread with a
kept-alive connection to one refresherd, asking for a handful of keys in turn
until told to stop; every request has its own deadline, and its outcome is
recorded (when it was sent, how long it took, its status and body, or the
error that ended it) for the test to judge what users saw.

    with Load(urls, keys=["a", "b"], deadline=8.0) as load:
        ...  # inject a fault
    assert load.wrong_values(produced) == []
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import httpx

DOCUMENTED_ERRORS: dict[int, frozenset[str]] = {
    502: frozenset({"fetch_failed"}),
    503: frozenset({"store_unavailable", "overloaded"}),
    504: frozenset({"wait_timeout"}),
}
"""The error objects a value request may get when nothing is wrong with the request."""


@attrs.frozen
class Outcome:
    """What one request got."""

    client: int
    url: str
    key: str
    sent: float
    """C{time.monotonic()} when it was sent."""
    took: float
    status: int | None = None
    """Its HTTP status; None when it got no answer (see C{error})."""
    body: Any = None
    """Its body, parsed as JSON (None if it was not JSON)."""
    error: str | None = None
    """For a request that got no answer: the exception's type and message."""
    cache_status: str = ""
    """Its C{Cache-Status} header."""

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def status_of_value(self) -> str | None:
        """For a value: how it was served (C{hit}, C{stale}, C{miss}); else None."""
        return self.body["status"] if self.kind == "value" else None

    @property
    def stored(self) -> bool:
        """For a miss: whether its value was written to the store."""
        return self.cache_status.endswith("; stored")

    @property
    def kind(self) -> str:
        """L{kind}: C{value}, C{error:<code>}, C{bad:<status>} or C{unanswered:<exception>}."""
        if self.status is None:
            return f"unanswered:{(self.error or '').split(':', 1)[0]}"
        return kind(self.status, self.body)

    def describe(self) -> str:
        what = self.error if self.status is None else f"{self.status} {json.dumps(self.body)}"
        return f"client {self.client} {self.key} at +{self.sent:.2f}s took {self.took:.2f}s: {what}"


def kind(status: int, body: Any) -> str:
    """
    What an answer is: C{value} (a 200 with a value), C{error:<code>} (a
    documented error object), or C{bad:<status>} (anything else).
    """
    if status == 200 and isinstance(body, dict) and "value" in body:
        return "value"
    code = error_code(body)
    if code is not None and code in DOCUMENTED_ERRORS.get(status, frozenset()):
        return f"error:{code}"
    return f"bad:{status}"


def error_code(body: Any) -> str | None:
    """The code of a documented error object C{{"error": {"code", "message"}}}, or None."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return None
    error = body["error"]
    if not isinstance(error, dict) or set(error) != {"code", "message"}:
        return None
    code, message = error["code"], error["message"]
    return code if isinstance(code, str) and isinstance(message, str) else None


@attrs.define(eq=False)
class Load:
    """
    C{clients} threads, client C{i} on C{urls[i % len(urls)]} (a service's
    public URL), each asking for one of C{keys} at random (seeded by its
    number: no two clients in step) with C{path % key}, C{pause} seconds
    apart, until L{stop}.

    @ivar deadline: each request's deadline in seconds: a request that takes
        longer is late (the client waits a second more, to see how late).
    """

    urls: Sequence[str]
    keys: Sequence[str]
    clients: int = 4
    deadline: float = 8.0
    path: str = "/v1/jobs/item?k=%s"
    pause: float = 0.01
    pause_unanswered: float = 0.2
    """The pause after a request that got no answer (its server is gone, say)."""
    headers: Callable[[], dict[str, str]] = dict
    """The headers of each request, asked for each (a token the test changes meanwhile)."""
    outcomes: list[Outcome] = attrs.field(factory=list, init=False)
    started: float = attrs.field(factory=time.monotonic, init=False)
    _stopping: threading.Event = attrs.field(factory=threading.Event, init=False)
    _threads: list[threading.Thread] = attrs.field(factory=list, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def start(self) -> None:
        self.started = time.monotonic()
        for client in range(self.clients):
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Outcome]:
        """Stop every client once its request under way ends; every outcome so far."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(self.deadline + 5)
            assert not thread.is_alive(), "a load client did not stop"
        self._threads.clear()
        return self.results()

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def now(self) -> float:
        """Seconds since the load started (the scale of L{Outcome.sent})."""
        return time.monotonic() - self.started

    def results(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        """The outcomes of the requests sent in [since, until) (seconds since the start)."""
        with self._lock:
            return [o for o in self.outcomes if since <= o.sent < until]

    def wait_for(self, count: int, since: float = 0.0, timeout: float = 20.0) -> None:
        """Wait until C{count} requests sent after C{since} have ended."""
        limit = time.monotonic() + timeout
        while len(self.results(since)) < count:
            if time.monotonic() > limit:
                raise AssertionError(f"the load made fewer than {count} requests in {timeout}s")
            time.sleep(0.02)

    def served(self, since: float = 0.0) -> set[str]:
        """How the values answered to requests sent after C{since} were served."""
        return {o.status_of_value for o in self.results(since) if o.status_of_value}

    def _run(self, client: int) -> None:
        url = self.urls[client % len(self.urls)]
        timeout = httpx.Timeout(self.deadline + 1)
        with httpx.Client(timeout=timeout) as http:
            choose = random.Random(client).choice
            while not self._stopping.is_set():
                key = choose(self.keys)
                outcome = self._ask(http, client, url, key)
                self._record(outcome)
                self._stopping.wait(self.pause if outcome.answered else self.pause_unanswered)

    def _ask(self, http: httpx.Client, client: int, url: str, key: str) -> Outcome:
        sent = time.monotonic()
        try:
            response = http.get(url + self.path % key, headers=self.headers())
        except httpx.HTTPError as e:
            took = time.monotonic() - sent
            error = f"{type(e).__name__}: {e}"
            return Outcome(client, url, key, sent - self.started, took, error=error)
        took = time.monotonic() - sent
        try:
            body = response.json()
        except ValueError:
            body = None
        return Outcome(
            client,
            url,
            key,
            sent - self.started,
            took,
            response.status_code,
            body,
            cache_status=response.headers.get("cache-status", ""),
        )

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)


def tally(outcomes: Iterable[Outcome]) -> Counter[str]:
    """How many outcomes of each L{Outcome.kind}."""
    return Counter(o.kind for o in outcomes)


def late(outcomes: Iterable[Outcome], deadline: float) -> list[str]:
    """The requests that took longer than C{deadline}, described."""
    return [o.describe() for o in outcomes if o.took > deadline]


def wrong_values(outcomes: Iterable[Outcome], produced: Callable[[str], list[Any]]) -> list[str]:
    """
    The values answered that the origin never produced for their key,
    described: C{produced(key)} is every value (parsed) it sent for it.
    """
    wrong = []
    cache: dict[str, list[Any]] = {}
    for outcome in outcomes:
        if outcome.kind != "value":
            continue
        value = outcome.body["value"]
        if value not in cache.setdefault(outcome.key, produced(outcome.key)):
            cache[outcome.key] = produced(outcome.key)  # sent since the first look
            if value not in cache[outcome.key]:
                wrong.append(outcome.describe())
    return wrong


def not_answered(outcomes: Iterable[Outcome], allowed: Iterable[str] = ("value",)) -> list[str]:
    """The requests whose kind is not one of C{allowed}, described."""
    kinds = set(allowed)
    return [o.describe() for o in outcomes if o.kind not in kinds]
