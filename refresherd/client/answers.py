"""
The answers of the public listener decoded: L{Raw} for C{/raw}, L{answer_value}
for the value of an answer, L{is_text_type} for which content types are text.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import attrs

from refresherd.client.errors import BadResponse, Pending


@attrs.frozen
class Raw:
    """
    An answer of C{GET /v1/jobs/{job}/raw}: the stored body itself, with its
    stored content type (C{status} 200), or, for a job that fetches in the
    background on a miss, the pending answer (C{status} 202; C{body} is then
    the JSON C{{"job", "key", "status": "pending"}}).  C{etag} and
    C{cache_status} are the answer's C{ETag} and C{Cache-Status} headers.
    """

    body: bytes
    content_type: str
    status: int = 200
    etag: str | None = None
    cache_status: str | None = None

    @property
    def pending(self) -> bool:
        """True when there is no value yet: it is being fetched in the background."""
        return self.status == 202

    @property
    def charset(self) -> str:
        """The C{charset} parameter of the content type, C{utf-8} when it has none."""
        for parameter in self.content_type.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        """The body decoded with its charset (UTF-8 when unknown), bad bytes replaced."""
        try:
            return self.body.decode(self.charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


_TEXT_TYPES = re.compile(
    r"text/.*|application/(json|xml|javascript|ecmascript|x-www-form-urlencoded)|"
    r"application/.*\+(json|xml)"
)


def is_text_type(content_type: str) -> bool:
    """
    True for a content type whose values are text: C{text/*}, JSON, XML,
    JavaScript, or any type with a C{charset} parameter.
    """
    media, _, parameters = content_type.partition(";")
    if _TEXT_TYPES.fullmatch(media.strip().lower()):
        return True
    return any(p.split("=", 1)[0].strip().lower() == "charset" for p in parameters.split(";"))


def answer_value(answer: Mapping[str, Any]) -> Any:
    """
    The value of an answer of C{GET /v1/jobs/{job}} (or of an item of a
    batch): the parsed JSON when its content type is JSON, the text of a text
    type (L{is_text_type}), else the bytes (the service sends a body that is
    UTF-8 as text whatever its type, and any other as C{value_b64}).
    L{Pending} for a pending answer, L{BadResponse} for one without a value.
    """
    if answer.get("status") == "pending":
        raise Pending(str(answer.get("job", "")), str(answer.get("key", "")))
    if "value_b64" in answer:
        try:
            return base64.b64decode(str(answer["value_b64"]), validate=True)
        except binascii.Error:
            raise BadResponse("the answer's value_b64 is not base64") from None
    if "value" not in answer:
        raise BadResponse("the answer has no value")
    value = answer["value"]
    content_type = str(answer.get("content_type") or "")
    if isinstance(value, str) and content_type and not is_text_type(content_type):
        return value.encode("utf-8")
    return value
