"""
Jobs and what a lookup names: a configured job with its fetcher, and the
target of a job name and arguments (the entry's key and its generation keys).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from refresherd.config import JobConfig
from refresherd.core.args import check_args
from refresherd.core.marks import (
    GenerationKeys,
    OwnTags,
    generation_keys,
    namespace_of,
    own_tags,
)
from refresherd.core.slots import Slots
from refresherd.core.templates import render_tags
from refresherd.entry import Entry, Fetched, value_entry
from refresherd.errors import UnknownJob
from refresherd.interfaces import IFetcher
from refresherd.keys import entry_key

TARGETS_KEPT = 4096
"""How many L{Target}s L{Targets} remembers (all are forgotten when more come)."""


@attrs.define
class Job:
    """A configured job with what runs it: its fetcher and its C{concurrency} slots."""

    config: JobConfig = attrs.field(on_setattr=attrs.setters.frozen)
    fetcher: IFetcher
    slots: Slots = attrs.field(init=False)
    name: str = attrs.field(init=False)
    """Its configuration's name (read by every request)."""

    def __attrs_post_init__(self) -> None:
        self.slots = Slots(self.config.concurrency)
        self.name = self.config.name

    @property
    def queued(self) -> int:
        """Fetches that requests wait for, waiting for a slot (what C{max_queue} bounds)."""
        return self.slots.queued


def may_tag(job: Job) -> bool:
    """Whether the job's fetches may bring tags of their own (the origin's, a result's)."""
    return job.config.freshness == "origin" or job.config.fetch == "python"


@attrs.frozen
class Target:
    """What a job name and arguments name: the entry's key and its generation keys."""

    job: Job
    args: Mapping[str, str]
    key: str
    generation_keys: GenerationKeys
    tags: tuple[str, ...] = ()
    """The job's tags filled with these arguments."""

    def own_tags(self, tags: tuple[str, ...]) -> OwnTags | None:
        """The tags of its own among an entry's C{tags} (those its job does not name), or None."""
        if tags is self.tags or tags == self.tags:
            return None
        keys = self.generation_keys
        return own_tags(namespace_of(self.key), self.job.name, keys, self.tags, tags)

    def new_entry(
        self,
        fetched: Fetched,
        now: float,
        duration: float,
        marks: tuple[str, str],
        previous: Entry | None = None,
    ) -> Entry:
        """
        The entry of a value fetched (or put) for this target at C{now}, with
        purge C{marks}; a 304 renews C{previous} (L{value_entry}).
        """
        config = self.job.config
        if fetched.not_modified and not fetched.tags and previous is not None and may_tag(self.job):
            own = self.own_tags(previous.tags)  # kept: the 304 names none
            if own is not None:
                fetched = attrs.evolve(fetched, tags=own.names)
        return value_entry(
            fetched,
            job=self.job.name,
            args=self.args,
            tags=self.tags,
            now=now,
            duration=duration,
            fresh=config.fresh,
            stale=config.stale,
            stale_if_error=config.stale_if_error,
            marks=marks,
            min_refresh=config.min_refresh,
            previous=previous,
        )


@attrs.define
class Targets:
    """
    The jobs of one namespace, and the targets their names and arguments
    name, remembered (at most L{TARGETS_KEPT}): every lookup needs one.
    """

    jobs: Mapping[str, Job]
    namespace: str
    _kept: dict[tuple[object, ...], Target] = attrs.field(factory=dict, init=False)

    def job(self, name: str) -> Job:
        """The job named C{name}, or L{UnknownJob}."""
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(f"no job named {name!r}") from None

    def target(self, job_name: str, given: Mapping[str, object]) -> Target:
        """
        The target of C{job_name} with the arguments C{given}: L{UnknownJob}
        or L{BadArgs} if they name none (never remembered).
        """
        memo = (job_name, *given.items())
        try:
            target = self._kept.get(memo)
        except TypeError:  # An unhashable value (from JSON): checking will refuse it.
            memo, target = (), None
        if target is not None:
            return target
        target = self.resolve(job_name, given)
        if memo:
            if len(self._kept) >= TARGETS_KEPT:
                self._kept.clear()
            self._kept[memo] = target
        return target

    def resolve(self, job_name: str, given: Mapping[str, object]) -> Target:
        """L{target}, not remembered (for a caller that remembers targets its own way)."""
        job = self.job(job_name)
        args = check_args(job.config, given)
        key = entry_key(self.namespace, job.name, job.config.version, args)
        tags = render_tags(job.config.tags, args)
        return Target(job, args, key, generation_keys(self.namespace, job.name, tags), tags)
