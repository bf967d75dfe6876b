"""
The attempts of one fetch: each under the job's C{timeout}, up to
C{retries + 1} of them with backoff between, each counted and timed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import attrs
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from refresherd.core import policy
from refresherd.core.jobs import Job
from refresherd.entry import NO_VALIDATORS, Fetched
from refresherd.errors import FetchError, FetchTimeout, one_line, public_reason
from refresherd.metrics import Metrics

ABANDONED = "the fetch was abandoned"
"""A cancelled attempt's reason, as C{GET /v1/status} shows it (the service stopping, say)."""


@attrs.define
class Attempts:
    """Runs a job's fetcher until it succeeds or its attempts run out."""

    clock: IReactorTime
    metrics: Metrics
    random: Callable[[], float] = random.random
    _log: Logger = attrs.field(factory=Logger, init=False)

    async def fetch(
        self, job: Job, args: Mapping[str, str], validators: tuple[str, str] = NO_VALIDATORS
    ) -> tuple[Fetched, float]:
        """
        The first success of up to C{retries + 1} attempts and how long it
        took; else the last attempt's L{FetchError}.  Cancelling abandons the
        attempt running.  With C{validators} (the stored value's C{ETag} and
        C{Last-Modified}), the fetcher asks whether the value changed.
        """
        config = job.config
        error: FetchError = FetchError("no attempt made")
        for attempt in range(config.retries + 1):
            if attempt:
                pause = policy.backoff(
                    attempt - 1,
                    policy.ATTEMPT_BACKOFF_BASE,
                    policy.ATTEMPT_BACKOFF_CAP,
                    self.random(),
                )
                await task.deferLater(self.clock, pause)
            start = self.clock.seconds()
            self.metrics.in_flight.labels(job=job.name).inc()
            outcome, reason = None, None
            try:
                revalidate = (validators,) if any(validators) else ()
                d = defer.maybeDeferred(job.fetcher.fetch, args, *revalidate)
                d.addTimeout(config.timeout, self.clock)
                fetched: Fetched = await d
                outcome = "not_modified" if fetched.not_modified else "success"
                if fetched.tags_dropped:
                    self.metrics.origin_tags_dropped.labels(job=job.name).inc(fetched.tags_dropped)
                return fetched, self.clock.seconds() - start
            except defer.TimeoutError:
                outcome = "timeout"
                error = FetchTimeout(f"the fetch took longer than {config.timeout:g}s")
            except FetchError as e:
                outcome = "error"
                error = e
            except CancelledError:
                outcome, reason = "error", ABANDONED
                raise
            except Exception as e:
                outcome = "error"
                self._log.failure("Fetcher of job {job} raised", job=job.name)
                error = FetchError(one_line(f"{type(e).__name__}: {e}".splitlines()[0]))
            finally:
                self.metrics.in_flight.labels(job=job.name).dec()
                if outcome is not None:  # None: the coroutine was closed, nothing happened
                    if outcome in ("timeout", "error") and reason is None:
                        reason = public_reason(str(error))
                    self.metrics.count_fetch(
                        job.name, outcome, self.clock.seconds() - start, reason
                    )
        raise error
