"""
Reloading the configuration (SIGHUP, C{POST /v1/reload}, docs/configuration.md,
"Reloading"): the file read again and validated in full as start-up would,
what changed found by a pure function (L{diff}), then applied to the running
engine in one step (L{apply_to_engine}), or refused with the line start-up
would print, the process serving what it served before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from refresherd.config import ServerConfig
from refresherd.core.jobs import Job
from refresherd.core.warmer import Warmer
from refresherd.errors import (
    ConfigError,
    RefresherdError,
    ReloadRefused,
    ReloadRunning,
)
from refresherd.http.auth import Authorizer
from refresherd.metrics import Metrics
from refresherd.run.services import Engine, ThreadPools
from refresherd.run.settings import Settings
from refresherd.run.wiring import max_entry_bytes


@attrs.frozen
class Changes:
    """What a reload changes, job by job, and what it cannot change."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    """Jobs configured otherwise (L{moved} included)."""
    moved: tuple[str, ...] = ()
    """Changed jobs whose C{version} changed: their values are under new keys."""
    tokens: bool = False
    """The tokens of C{[auth]} changed."""
    restart: tuple[str, ...] = ()
    """The settings that changed and that only a restart changes: the reload is refused."""

    def describe(self) -> str:
        """What changed, for the log line: C{added a; changed b (version: new keys); ...}."""
        parts = []
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.changed:
            named = [f"{n} (version: new keys)" if n in self.moved else n for n in self.changed]
            parts.append("changed " + ", ".join(named))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        if self.tokens:
            parts.append("tokens changed")
        return "; ".join(parts) or "nothing changed"

    def to_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "changed": list(self.changed),
            "removed": list(self.removed),
            "new_keys": list(self.moved),
            "tokens": self.tokens,
        }


def fixed_settings(settings: Settings) -> dict[str, object]:
    """
    The settings only a restart changes, each by the name a refusal gives it:
    the listeners, the store (its URL, its namespace, and with a shared store
    the largest entry it reads: the largest C{max_value_bytes}), and every
    C{[server]} key (the listeners' limits, the access log, the hot keys).
    C{--workers} and C{--log-format} are options, the same for a reload.
    """
    config = settings.config
    fixed: dict[str, object] = {}
    for setting in (settings.listen, settings.admin_listen, settings.store):
        fixed[setting.where.rpartition(": ")[2]] = setting.value
    fixed["store.namespace"] = config.store.namespace
    if settings.store.value.partition("://")[0] != "memory":
        fixed["the largest jobs.*.max_value_bytes (a shared store's limit)"] = max_entry_bytes(
            config.jobs
        )
    for field in attrs.fields(ServerConfig):
        if field.name not in ("listen", "admin_listen"):
            fixed[f"server.{field.name}"] = getattr(config.server, field.name)
    return fixed


def diff(old: Settings, new: Settings) -> Changes:
    """What reloading C{new} over C{old} changes (a pure function of the two)."""
    before, after = old.config.jobs, new.config.jobs
    changed = tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n]))
    was, now = fixed_settings(old), fixed_settings(new)
    return Changes(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=changed,
        moved=tuple(n for n in changed if before[n].version != after[n].version),
        tokens=old.config.auth != new.config.auth,
        restart=tuple(name for name in now if was.get(name) != now[name]),
    )


def refusal(settings: Settings, changes: Changes) -> ConfigError:
    """The error of a reload that changes what only a restart changes."""
    return ConfigError(
        f"{settings.config.source}: only a restart changes {', '.join(changes.restart)}"
    )


Apply = Callable[[Settings, Settings, Changes], "Deferred[None] | None"]
"""Applies a validated configuration (old, new, changes); L{ConfigError} if it finds it wrong."""


@attrs.define(eq=False)
class Reloader:
    """
    One reload at a time: read the settings again (L{read}), refuse what only a
    restart changes, have L{apply} check and apply the rest, and log and count
    the outcome (L{Metrics.reloaded}).
    """

    settings: Settings
    """What the process serves."""
    read: Callable[[], Settings]
    """The settings as start-up reads them (the same options): L{ConfigError} if wrong."""
    apply: Apply
    metrics: Metrics
    running: bool = attrs.field(default=False, init=False)
    _log: Logger = attrs.field(factory=Logger, init=False)

    def reload(self) -> Deferred[dict[str, Any]]:
        """
        Reload: a Deferred of what changed (C{POST /v1/reload}'s answer), or
        of L{ReloadRefused} with the line start-up would print, or
        L{ReloadRunning}.  Never fails otherwise: it logs.
        """
        if self.running:
            return defer.fail(ReloadRunning("a reload is running: one at a time"))
        self.running = True
        try:
            new = self.read()
            changes = diff(self.settings, new)
            if changes.restart:
                raise refusal(new, changes)
            done = defer.maybeDeferred(self.apply, self.settings, new, changes)
        except (ConfigError, RefresherdError) as e:
            return defer.fail(self._refused(e))
        except Exception:
            self._log.failure("refresherd: reload failed")
            return defer.fail(self._refused(ConfigError("the reload failed: see the log")))
        return done.addCallbacks(lambda _: self._done(new, changes), self._failed)

    def _done(self, new: Settings, changes: Changes) -> dict[str, Any]:
        self.running = False
        self.settings = new
        self.metrics.reloaded(True)
        names = sorted(new.config.jobs)
        self._log.info(
            "refresherd: reloaded {source}: {count} job(s) ({jobs}); {changes}",
            source=new.config.source,
            count=len(names),
            jobs=", ".join(names) or "none",
            changes=changes.describe(),
        )
        return {"source": new.config.source, "jobs": names, **changes.to_json()}

    def _failed(self, failure: Any) -> Any:
        if failure.check(ConfigError, RefresherdError):
            raise self._refused(failure.value)
        self._log.failure("refresherd: reload failed", failure)
        raise self._refused(ConfigError("the reload failed: see the log"))

    def _refused(self, error: Exception) -> RefresherdError:
        """The line start-up would print, and that the configuration loaded before still serves."""
        self.running = False
        self.metrics.reloaded(False)
        self._log.warn(
            "refresherd: {error} (reload refused: the configuration loaded before is still served)",
            error=str(error),
        )
        return error if isinstance(error, RefresherdError) else ReloadRefused(str(error))


def apply_to_engine(
    engine: Engine,
    authorizer: Authorizer,
    check_admin: Callable[[Settings, Authorizer], None],
    clock: Any,
) -> Apply:
    """The apply step of a single process: L{prepare_engine}, then its change at once."""
    prepare = prepare_engine(engine, authorizer, check_admin, clock)

    def apply(old: Settings, new: Settings, changes: Changes) -> None:
        prepare(new, changes)()

    return apply


def prepare_engine(
    engine: Engine,
    authorizer: Authorizer,
    check_admin: Callable[[Settings, Authorizer], None],
    clock: Any,
) -> Callable[[Settings, Changes], Callable[[], None]]:
    """
    Check what only building finds (each new or changed job's fetcher, a
    python job's function; the admin listener allowed with the new tokens:
    C{check_admin}): L{ConfigError}, or the change, which cannot fail, to make
    when wanted: the jobs, their metrics, the warm lists and the tokens
    swapped at once.  The fetches in flight finish with the jobs they started
    with; the pools of python jobs removed or replaced stop once idle.
    """

    def prepare(new: Settings, changes: Changes) -> Callable[[], None]:
        refresher = engine.refresher
        new_authorizer = Authorizer.from_config(new.config.auth)
        check_admin(new, new_authorizer)
        assert engine.make_job is not None
        staged = ThreadPools()
        current = refresher.jobs
        jobs: dict[str, Job] = {
            name: (
                current[name]
                if name in current and current[name].config == config
                else engine.make_job(config, staged)
            )
            for name, config in new.config.jobs.items()
        }

        def change() -> None:
            for pool in staged.pools:
                engine.pools.add(pool)
            engine.refresher.metrics.set_jobs(jobs)
            refresher.set_jobs(jobs)
            authorizer.replace(new_authorizer)
            warm_jobs = {*changes.added, *changes.changed, *changes.removed}
            if engine.warms and any(
                job.config.warm
                for name, job in (*current.items(), *jobs.items())
                if name in warm_jobs
            ):
                rewarm(engine, clock)
            for name, job in current.items():
                retired = getattr(job.fetcher, "thread_pool", None)  # a python job's
                if jobs.get(name) is not job and retired is not None:
                    engine.pools.retire(retired, clock)

        return change

    return prepare


def rewarm(engine: Engine, clock: Any) -> None:
    """The warm lists as the jobs now name them: a new warmer (fetching only what is not fresh)."""
    refresher = engine.refresher
    old = engine.warmer
    if old is not None:
        refresher.purge_listeners.remove(old.purged)
        old.disownServiceParent()  # stops its timers
    engine.warmer = None
    if any(job.config.warm for job in refresher.jobs.values()):
        engine.warmer = Warmer(refresher, clock)
        engine.warmer.setServiceParent(engine)
