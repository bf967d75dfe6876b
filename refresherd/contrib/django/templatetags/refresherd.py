"""
C{{% load refresherd %}}: the C{refreshed} and C{refreshed_batch} tags.

    {% refreshed "sidebar" user_id=user.id %}<p>Loading…</p>{% endrefreshed %}

renders the stored body of job C{sidebar} with argument C{user_id}, fetched
from refresherd's raw endpoint (C{GET /v1/jobs/sidebar/raw?user_id=42}): a
snippet built before the request (by a callback of the application, say) and
reused wherever it is needed.  The block between the tags is rendered instead
when there is no snippet yet (202: the job has C{on_miss = "empty"} and is
fetching it) or refresherd is down (unreachable, 5xx).  An unknown job or
bad arguments (4xx) raise: those are bugs.

The body is text, escaped as a variable is (unless C{{% autoescape off %}}),
unless the job is one of C{REFRESHERD["TRUSTED_HTML_JOBS"]}: then it is
inserted as it is, as the application's own pre-rendered HTML.  List only
jobs whose values nobody else can write: built by the application's own code
(a callback that escapes user data, as Django's templates do), never a third
party's URL, and not C{writable} in refresherd unless every holder of a write
token may write the page.

    {% refreshed_batch %}...{% endrefreshed_batch %}

asks for every C{refreshed} block rendered between its tags in one request
(C{POST /v1/fetch}, a request per 100 blocks), wherever they are: in loops,
included templates, the blocks of a child template.  Each block renders as it
would alone (its fallback for an outage, a pending value or an item the batch
cannot answer; the same escaping; a 4xx raises).  It renders its content once,
each block as a marker, then puts the answers in place of the markers.

With C{REFRESHERD["REDIS_URL"]}, both read fresh hits straight from Redis
(the client's direct reads: one C{MGET} per block, or one for a whole batch)
and ask refresherd over HTTP for everything else, as the client does.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from django import template
from django.template.base import FilterExpression, NodeList
from django.template.defaulttags import token_kwargs
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

from refresherd.client import Raw, ServiceError
from refresherd.contrib.django.conf import get_client, get_settings

register = template.Library()

BATCH = "_refresherd_batch"
"""The context variable of the batch collecting the blocks rendered inside C{refreshed_batch}."""
MAX_BATCH = 100
"""Blocks asked for in one request: the service's default C{max_batch}."""

_MARKER = re.compile("<!--refreshed:([0-9a-f]{16}):([0-9]+)-->", re.IGNORECASE)
"""A block's marker (its batch's nonce, its number), whatever the case a filter gave it."""
Target = tuple[str, tuple[tuple[str, str], ...]]
"""A job and its arguments, sorted, as a batch tells blocks apart."""


class RefreshedNode(template.Node):
    def __init__(
        self, job: FilterExpression, arguments: dict[str, FilterExpression], fallback: NodeList
    ) -> None:
        self.job = job
        self.arguments = arguments
        self.fallback = fallback

    def render(self, context: Any) -> str:
        job = self.job.resolve(context)
        if not isinstance(job, str) or not job:
            raise template.TemplateSyntaxError(f"refreshed: the job name is {job!r}")
        arguments: dict[str, str] = {}
        for name, expression in self.arguments.items():
            value = expression.resolve(context)
            if value is None:
                raise ValueError(f"refreshed {job!r}: argument {name!r} is None")
            arguments[name] = value if isinstance(value, str) else str(value)
        fallback = str(self.fallback.render(context))
        batch = context.get(BATCH)
        if isinstance(batch, Batch):
            return batch.add(job, arguments, fallback, context.autoescape)
        raw = get_client().raw(job, arguments, default=None)
        return _block(job, None if raw is None else raw.text, fallback, context.autoescape)


def _block(job: str, text: str | None, fallback: str, autoescape: bool) -> str:
    """A block as it renders: its text, trusted or escaped, or its fallback."""
    if text is None:
        return fallback
    if job in get_settings().trusted_html_jobs:
        return mark_safe(text)
    return conditional_escape(text) if autoescape else text


@attrs.define
class Batch:
    """The blocks rendered inside a C{refreshed_batch}: each a marker until the answers come."""

    nonce: str = attrs.Factory(lambda: secrets.token_hex(8))
    targets: dict[Target, int] = attrs.Factory(dict)
    blocks: list[Callable[[list[str | None]], str]] = attrs.Factory(list)

    def add(self, job: str, arguments: dict[str, str], fallback: str, autoescape: bool) -> str:
        """The marker of a block, in place of its text until L{fill}."""
        index = self.targets.setdefault((job, tuple(sorted(arguments.items()))), len(self.targets))
        self.blocks.append(lambda texts: _block(job, texts[index], fallback, autoescape))
        return f"<!--refreshed:{self.nonce}:{len(self.blocks) - 1}-->"

    def fill(self, page: str) -> str:
        """C{page} with each block's marker replaced by the block, all asked for in batches."""
        if not self.blocks:
            return page
        targets = list(self.targets)
        answers: list[Any] = []
        for start in range(0, len(targets), MAX_BATCH):
            chunk = targets[start : start + MAX_BATCH]
            items = [(job, dict(arguments)) for job, arguments in chunk]
            answers.extend(get_client().get_many(items, default=None))
        texts = [_text(target, answer) for target, answer in zip(targets, answers, strict=True)]

        def block(match: re.Match[str]) -> str:
            if match.group(1).lower() != self.nonce:
                return match.group(0)  # not this batch's
            return self.blocks[int(match.group(2))](texts)

        return _MARKER.sub(block, page)


def _text(target: Target, answer: Any) -> str | None:
    """
    The text of an item of a batch as C{/raw} gives it, or None for the
    fallback (an outage, a pending value).  A mistake (4xx) raises.  A value
    whose body the item does not carry as it is (a JSON value, parsed; text of
    another charset than UTF-8) is asked for alone, by C{/raw}.
    """
    if isinstance(answer, ServiceError):
        raise answer
    if answer is None or answer.get("status") == "pending":
        return None
    content_type = str(answer.get("content_type") or "application/octet-stream")
    if isinstance(answer.get("value_b64"), str):
        try:
            body = base64.b64decode(answer["value_b64"], validate=True)
        except binascii.Error:
            body = None
        if body is not None:
            return Raw(body, content_type).text
    elif (
        isinstance(answer.get("value"), str)
        and "json" not in content_type.lower()
        and Raw(b"", content_type).charset.lower() in ("utf-8", "utf8")
    ):
        return str(answer["value"])  # the body, which is UTF-8, as it is
    job, arguments = target
    raw = get_client().raw(job, dict(arguments), default=None)
    return None if raw is None else raw.text


class RefreshedBatchNode(template.Node):
    def __init__(self, nodelist: NodeList) -> None:
        self.nodelist = nodelist

    def render(self, context: Any) -> str:
        if isinstance(context.get(BATCH), Batch):
            return str(self.nodelist.render(context))  # inside another: that one asks
        batch = Batch()
        with context.push({BATCH: batch}):
            page = str(self.nodelist.render(context))
        return mark_safe(batch.fill(page))


@register.tag("refreshed")
def refreshed(parser: Any, token: Any) -> RefreshedNode:
    """C{{% refreshed JOB NAME=VALUE... %}fallback{% endrefreshed %}}."""
    bits = token.split_contents()
    tag = bits.pop(0)
    if not bits:
        raise template.TemplateSyntaxError(f"{tag!r} takes a job name, then name=value arguments")
    job = parser.compile_filter(bits.pop(0))
    arguments = token_kwargs(bits, parser, support_legacy=False)
    if bits:
        raise template.TemplateSyntaxError(
            f"{tag!r} takes a job name, then name=value arguments; not {bits[0]!r}"
        )
    fallback = parser.parse(("endrefreshed",))
    parser.delete_first_token()
    return RefreshedNode(job, arguments, fallback)


@register.tag("refreshed_batch")
def refreshed_batch(parser: Any, token: Any) -> RefreshedBatchNode:
    """C{{% refreshed_batch %}...{% endrefreshed_batch %}}: its blocks asked for in one request."""
    if len(token.split_contents()) != 1:
        raise template.TemplateSyntaxError("'refreshed_batch' takes no arguments")
    nodelist = parser.parse(("endrefreshed_batch",))
    parser.delete_first_token()
    return RefreshedBatchNode(nodelist)
