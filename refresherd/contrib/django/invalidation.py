"""
Soft purges by tag when models change: the values that were built from a
row are marked stale once its transaction commits, so the next request for
one is answered at once with the old value while one refresh regenerates it,
and the requests after that get the new one.

    # myapp/apps.py
    class MyAppConfig(AppConfig):
        def ready(self):
            from refresherd.contrib.django import refresh_tags_on_change
            refresh_tags_on_change(Profile, tags=["user:{user_id}"])
            refresh_tags_on_change(Comment, tags=lambda c: [f"post:{c.post_id}"])

with jobs tagged C{tags = ["user:{user_id}"]} in refresherd's configuration.
A write token is enough (C{REFRESHERD["TOKEN"]}).  A purge that fails is
logged (logger C{refresherd.contrib.django}) and never fails the save: the
row is committed by then, and refresherd's values expire on their own.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from refresherd.client import RefresherdClientError, ServiceError, Unreachable
from refresherd.contrib.django.conf import get_client

logger = logging.getLogger("refresherd.contrib.django")

Tags = Callable[[Any], Iterable[str]] | Sequence[str]
"""A function of the instance giving its tags, or templates such as C{"user:{user_id}"}."""


def _send(tags: list[str], soft: bool) -> None:
    try:
        get_client().purge(tags=tags, soft=soft)
    except Unreachable as e:
        logger.warning("refresherd: tags %s not purged: %s", ", ".join(tags), e)
    except ServiceError as e:
        level = logging.WARNING if e.outage else logging.ERROR
        logger.log(level, "refresherd: tags %s not purged: %s", ", ".join(tags), e)
    except RefresherdClientError as e:
        logger.error("refresherd: tags %s not purged: %s", ", ".join(tags), e)


def purge_tags(
    tags: Iterable[str], *, soft: bool = True, using: str | None = None, on_commit: bool = True
) -> None:
    """
    Purge the values tagged with any of C{tags} (soft, by default): once the
    current transaction of database C{using} commits (at once outside one),
    or at once when not C{on_commit}.
    """
    if isinstance(tags, str):
        raise TypeError("tags must be an iterable of strings, not a single string")
    wanted = list(dict.fromkeys(tags))
    if not all(isinstance(tag, str) and tag for tag in wanted):
        raise TypeError("tags are non-empty strings")
    if not wanted:
        return
    if on_commit:
        transaction.on_commit(lambda: _send(wanted, soft), using=using)
    else:
        _send(wanted, soft)


class _Attributes(dict[str, Any]):
    """C{str.format_map} over an instance's attributes."""

    def __init__(self, instance: Any) -> None:
        super().__init__()
        self.instance = instance

    def __missing__(self, name: str) -> Any:
        return getattr(self.instance, name)


def instance_tags(tags: Tags, instance: Any) -> list[str]:
    """The tags of C{instance}: C{tags(instance)}, or each template filled from its attributes."""
    if callable(tags):
        found = list(tags(instance))
    else:
        found = [string.Formatter().vformat(t, (), _Attributes(instance)) for t in tags]
    if not all(isinstance(tag, str) and tag for tag in found):
        raise TypeError(f"the tags of {instance!r} are not non-empty strings: {found!r}")
    return found


def refresh_tags_on_change(
    model: Any,
    tags: Tags,
    *,
    soft: bool = True,
    on_save: bool = True,
    on_delete: bool = True,
) -> Callable[[], None]:
    """
    Purge the tags of an instance of C{model} (soft, by default) when it is
    saved or deleted, once its transaction commits.  C{tags} is a function of
    the instance returning its tags, or a list of templates filled from its
    attributes (C{"user:{user_id}"}, C{"post:{pk}"}).  Call it once per
    model, from an C{AppConfig.ready()}.  Returns a function that
    disconnects it again.
    """
    if isinstance(tags, str):
        raise TypeError('tags is a function or a list of templates, not a single string: ["..."]')

    def changed(sender: Any, instance: Any, using: str | None = None, **kwargs: Any) -> None:
        purge_tags(instance_tags(tags, instance), soft=soft, using=using)

    uid = f"refresherd.tags:{id(changed)}"
    if on_save:
        post_save.connect(changed, sender=model, weak=False, dispatch_uid=uid)
    if on_delete:
        post_delete.connect(changed, sender=model, weak=False, dispatch_uid=uid)

    def disconnect() -> None:
        post_save.disconnect(sender=model, dispatch_uid=uid)
        post_delete.disconnect(sender=model, dispatch_uid=uid)

    return disconnect
