"""
Purges by job and by tag without scanning the store, as pure functions.

Three names, each for one thing:

- a B{generation key}: a key in the store (L{keys.generation_key}), two per job
  and per tag, a hard one and a soft one;
- a B{purge token}: the random value a generation key holds, replaced by each
  purge (and absent until the first purge);
- a B{purge mark}: a digest of the tokens of an entry's generation keys.

An entry records (L{refresherd.entry.Entry.marks}, stored as the field
C{generations}) two marks: digests of the tokens of its job's and tags' hard keys and of their soft
keys as they were when its fetch began.  A read fetches the current tokens
beside the entry (in the same round trip) and compares marks: a hard mark that
differs means the entry was purged (it reads as absent), a soft one that it was
soft-purged (it is served stale while one refresh regenerates it).

A purge thus costs one write, whatever the number of entries it covers, and a
read costs the extra keys of its job and tags, fetched with the entry.  A mark
is compared for equality, never for order, so a token that is lost (evicted)
reads as a purge, never as a purge undone.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Mapping

import attrs

from refresherd.keys import generation_key

NO_MARK = ""
"""The mark of keys none of which was ever purged."""

GENERATION_MARGIN = 3600.0
"""How much longer than the entries that may carry its mark a generation key
lives: a token lost while such an entry lives would read as one more purge,
and one lost while an entry written before it lives as a purge undone."""


class Purge(enum.Enum):
    HARD = "hard"
    """Purged: the entry reads as absent."""
    SOFT = "soft"
    """Soft-purged: the entry is served stale while one refresh regenerates it."""


@attrs.frozen
class GenerationKeys:
    """The generation keys of one job with its tags filled in."""

    hard: tuple[str, ...]
    soft: tuple[str, ...]
    all: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    """The hard keys, then the soft ones (read with every entry)."""

    @all.default
    def _both(self) -> tuple[str, ...]:
        return self.hard + self.soft

    def marks(self, tokens: Mapping[str, str]) -> tuple[str, str]:
        """The (hard, soft) marks of the current C{tokens} (a key missing: never purged)."""
        if not tokens:  # Nothing ever purged: most lookups.
            return NO_MARK, NO_MARK
        return _mark(self.hard, tokens), _mark(self.soft, tokens)


def build_generation_keys(namespace: str, job: str, tags: tuple[str, ...]) -> GenerationKeys:
    """The hard and soft generation keys of C{job} and of each of its C{tags}."""
    names = [("job", job)] + [("tag", tag) for tag in dict.fromkeys(tags)]
    return GenerationKeys(
        tuple(generation_key(namespace, kind, name, hard=True) for kind, name in names),
        tuple(generation_key(namespace, kind, name, hard=False) for kind, name in names),
    )


generation_keys = functools.lru_cache(maxsize=4096)(build_generation_keys)
"""
L{build_generation_keys}, cached, for a job's own tags (computed for every
lookup of a new target).  Tags that come from elsewhere (an origin, the
store) are many and varied: they use L{build_generation_keys}.
"""


@attrs.frozen
class OwnTags:
    """The tags an entry carries of its own (an origin's), beside its job's."""

    tags: tuple[str, ...]
    """All the entry's tags, as read."""
    names: tuple[str, ...]
    """Those its job does not name."""
    keys: tuple[str, ...]
    """The hard, then the soft generation keys of C{names}: read with the entry."""
    all: GenerationKeys
    """The generation keys of its job, the job's tags and its own: what its marks cover."""


def own_tags(
    namespace: str,
    job: str,
    job_keys: GenerationKeys,
    job_tags: tuple[str, ...],
    tags: tuple[str, ...],
) -> OwnTags | None:
    """The tags of its own among an entry's C{tags}, or None when it has none."""
    names = tuple(tag for tag in dict.fromkeys(tags) if tag not in job_tags)
    if not names:
        return None
    extra = build_generation_keys(namespace, job, names)
    hard, soft = extra.hard[1:], extra.soft[1:]  # the job's own keys come first
    return OwnTags(
        tags, names, hard + soft, GenerationKeys(job_keys.hard + hard, job_keys.soft + soft)
    )


def renewed(
    entry_key: str, job: str, tags: tuple[str, ...], marks: tuple[str, str]
) -> tuple[str, ...]:
    """
    The generation keys whose expiry a write of an entry with C{marks} must
    push out (those of its job and tags; none when no purge ever marked it).
    The namespace is C{entry_key}'s, the text before its first colon.
    """
    if marks == (NO_MARK, NO_MARK):
        return ()
    return build_generation_keys(namespace_of(entry_key), job, tags).all


def namespace_of(entry_key: str) -> str:
    """The namespace of C{entry_key}: the text before its first colon."""
    return entry_key.partition(":")[0]


def tag_purge_keys(namespace: str) -> tuple[str, str]:
    """
    The hard and soft keys that every purge by tag (hard, or soft) renews
    besides the tag's own: C{{namespace}:gen:hard:tags} and
    C{{namespace}:gen:soft:tags}.  A fetch whose tags are known only after
    it (the origin's) reads them before and after, to tell whether a purge
    by tag ran meanwhile.
    """
    return f"{namespace}:gen:hard:tags", f"{namespace}:gen:soft:tags"


def generation_ttl(longest_lifetime: float) -> float:
    """How long a purge's token lives: past every entry that may exist when it is written."""
    return longest_lifetime + GENERATION_MARGIN


def _mark(keys: tuple[str, ...], tokens: Mapping[str, str]) -> str:
    """A digest of the tokens of C{keys} that exist, or L{NO_MARK} if none does."""
    seen = sorted(f"{key}={tokens[key]}" for key in keys if tokens.get(key))
    if not seen:
        return NO_MARK
    return hashlib.sha256("\n".join(seen).encode("utf-8")).hexdigest()[:32]


def purge_of(recorded: tuple[str, str], current: tuple[str, str]) -> Purge | None:
    """Whether an entry that recorded C{recorded} marks is purged, given the C{current} ones."""
    if recorded[0] != current[0]:
        return Purge.HARD
    if recorded[1] != current[1]:
        return Purge.SOFT
    return None
