"""
C{{% load refresherd %}}: the C{refreshed} tag.

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
"""

from __future__ import annotations

from typing import Any

from django import template
from django.template.base import FilterExpression, NodeList
from django.template.defaulttags import token_kwargs
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

from refresherd.contrib.django.conf import get_client, get_settings

register = template.Library()


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
        arguments: dict[str, Any] = {}
        for name, expression in self.arguments.items():
            value = expression.resolve(context)
            if value is None:
                raise ValueError(f"refreshed {job!r}: argument {name!r} is None")
            arguments[name] = value if isinstance(value, str) else str(value)
        raw = get_client().raw(job, arguments, default=None)
        if raw is None:
            return str(self.fallback.render(context))
        if job in get_settings().trusted_html_jobs:
            return mark_safe(raw.text)
        return conditional_escape(raw.text) if context.autoescape else raw.text


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
