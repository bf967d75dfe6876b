"""
Templates with C{{name}} placeholders: job URLs, request bodies and tags.

The operator writes templates; callers only supply argument values, which are
substituted, never interpreted: in a URL they are percent-encoded whole (a C{/}
becomes C{%2F}) and only allowed in the path and the query, and a value of
C{.} or C{..} is refused, so a caller cannot steer a fetch to another host or
path.  (L{refresherd.core.args} also refuses C{/}, C{\\} and empty values in
the path unless the job sets C{path_slash}, for origins that decode C{%2F}
before routing.)  In a JSON body they fill string leaves of the parsed
template, so they cannot change its structure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from refresherd.errors import BadArgs

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> list[str]:
    """The names of the placeholders in C{template}, in order."""
    return PLACEHOLDER.findall(template)


def path_placeholders(url: str) -> list[str]:
    """The names of the placeholders in the path of the URL template C{url}."""
    return placeholders(urlsplit(url).path)


def json_placeholders(template: Any) -> list[str]:
    """The names of the placeholders in every string of a JSON template."""
    if isinstance(template, str):
        return placeholders(template)
    if isinstance(template, Mapping):
        return [n for k, v in template.items() for n in placeholders(k) + json_placeholders(v)]
    if isinstance(template, list):
        return [n for item in template for n in json_placeholders(item)]
    return []


def check_url_template(url: str) -> None:
    """
    Raise L{ValueError} unless C{url} is an absolute http(s) URL whose
    placeholders stand only in its path and query.
    """
    match = re.match(r"^(https?)://([^/?#]*)(.*)$", url)
    if match is None:
        raise ValueError("must be an absolute http:// or https:// URL")
    authority, rest = match.group(2), match.group(3)
    if not authority:
        raise ValueError("has no host")
    if placeholders(authority):
        raise ValueError(
            "has a placeholder in its host; placeholders may stand only in path and query"
        )
    if "#" in rest and placeholders(rest.split("#", 1)[1]):
        raise ValueError(
            "has a placeholder in its fragment; placeholders may stand only in path and query"
        )
    for brace in re.sub(PLACEHOLDER, "", url):
        if brace in "{}":
            raise ValueError("has a '{' or '}' that is not a {name} placeholder")


def _url_value(name: str, value: str) -> str:
    if value in (".", ".."):
        raise BadArgs(f"argument {name!r} may not be {value!r}")
    return quote(value.encode("utf-8"), safe="")


def render_url(url: str, args: Mapping[str, str]) -> str:
    """C{url} with each placeholder replaced by its percent-encoded argument value."""
    return PLACEHOLDER.sub(lambda m: _url_value(m.group(1), args[m.group(1)]), url)


def render_text(template: str, args: Mapping[str, str]) -> str:
    """C{template} with each placeholder replaced by its argument value, as is."""
    return PLACEHOLDER.sub(lambda m: args[m.group(1)], template)


def render_json(template: Any, args: Mapping[str, str]) -> Any:
    """A JSON template with the placeholders of its strings filled."""
    if isinstance(template, str):
        return render_text(template, args)
    if isinstance(template, Mapping):
        return {render_text(k, args): render_json(v, args) for k, v in template.items()}
    if isinstance(template, list):
        return [render_json(item, args) for item in template]
    return template


def render_tags(tags: Iterable[str], args: Mapping[str, str]) -> tuple[str, ...]:
    """The tags filled with C{args}, each once (C{obj:{a}} and C{obj:{b}} may fill alike)."""
    return tuple(dict.fromkeys(render_text(tag, args) for tag in tags))
