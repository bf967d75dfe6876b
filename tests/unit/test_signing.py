"""
L{refresherd.signing}: the C{X-Refresherd-Signature} of refresherd's requests
to C{sign} jobs (docs/configuration.md, "Signed requests (`sign`)"), made and
checked in one place.  Expected digests are computed here with L{hmac}
directly, or taken from the worked example of docs/configuration.md.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from refresherd import signing
from refresherd.signing import (
    SIGNATURE_HEADER,
    WINDOW,
    BadSignature,
    Signature,
    check_signature,
    digest,
    message,
    parse_signature,
    sign,
)

SECRET = "s3cret"
T = 1767225600
NONCE = "3f9a0c5d7e21b48a"
METHOD = "POST"
TARGET = "/_refresherd/profile/bob%2Fx?lang=fr%20%C3%A7a"
BODY = b'{"user": "bob/x", "fields": ["name", "bio"]}'
DOCUMENTED = (
    "t=1767225600,n=3f9a0c5d7e21b48a,"
    "v1=28ddf7a54f7edaa16823d2144ba575065d8117b84402a47f2ae48b881179a7ee"
)
"""The signed request of docs/configuration.md, "Signed requests (`sign`)"."""


def always_new(nonce: str, t: int) -> bool:
    return True


def check(header: str | None, **change: Any) -> Signature:
    """L{check_signature} of the documented request at C{T}, with C{change} applied."""
    call: dict[str, Any] = {
        "secrets": [SECRET],
        "header": header,
        "method": METHOD,
        "target": TARGET,
        "body": BODY,
        "remember": always_new,
        "now": T,
    }
    call.update(change)
    return check_signature(**call)


# -- signing ------------------------------------------------------------------------------


def test_the_documented_example_is_what_sign_makes() -> None:
    assert sign(SECRET, T, NONCE, METHOD, TARGET, BODY) == DOCUMENTED


def test_the_signed_message_and_its_hmac() -> None:
    signed = b"1767225600\n3f9a0c5d7e21b48a\nPOST\n/a%2Fb?x=1\n" + b'{"a": 1}'
    assert message(T, NONCE, "post", "/a%2Fb?x=1", b'{"a": 1}') == signed
    expected = hmac.new(b"key", signed, hashlib.sha256).hexdigest()
    assert digest(b"key", T, NONCE, "POST", "/a%2Fb?x=1", b'{"a": 1}') == expected
    assert sign(b"key", T, NONCE, "POST", "/a%2Fb?x=1", b'{"a": 1}') == (
        f"t={T},n={NONCE},v1={expected}"
    )


def test_a_get_signs_an_empty_body() -> None:
    expected = hmac.new(b"key", f"{T}\n{NONCE}\nGET\n/p\n".encode(), hashlib.sha256).hexdigest()
    assert sign(b"key", T, NONCE, "GET", "/p", b"") == f"t={T},n={NONCE},v1={expected}"


def test_a_str_secret_is_keyed_by_its_utf8_bytes() -> None:
    assert sign("sécret", T, NONCE, METHOD, TARGET, BODY) == sign(
        "sécret".encode(), T, NONCE, METHOD, TARGET, BODY
    )


def test_the_method_is_signed_in_upper_case() -> None:
    assert sign(SECRET, T, NONCE, "post", TARGET, BODY) == DOCUMENTED


# -- checking -----------------------------------------------------------------------------


def test_sign_then_check_round_trips() -> None:
    header = sign(SECRET, T, NONCE, METHOD, TARGET, BODY)
    signature = check(header)
    assert signature == Signature(T, NONCE, header.rsplit("=", 1)[1])
    assert check(header, method="post") == signature


def test_any_of_the_secrets_may_have_signed() -> None:
    assert check(DOCUMENTED, secrets=["old", b"other", SECRET]).nonce == NONCE


def test_white_space_around_the_header_is_ignored() -> None:
    assert check(f"  {DOCUMENTED}\t").t == T


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY + b" "},
        {"body": b""},
        {"method": "PUT"},
        {"target": "/_refresherd/profile/bob/x?lang=fr%20%C3%A7a"},
        {"target": TARGET + "&x=1"},
        {"secrets": ["other"]},
        {"secrets": [SECRET.upper()]},
    ],
)
def test_a_changed_request_or_secret_does_not_match(change: dict[str, Any]) -> None:
    with pytest.raises(BadSignature, match="does not match"):
        check(DOCUMENTED, **change)


@pytest.mark.parametrize(
    "header",
    [
        DOCUMENTED.replace(f"t={T}", f"t={T + 1}"),
        DOCUMENTED.replace(f"n={NONCE}", "n=3f9a0c5d7e21b48b"),
        DOCUMENTED[:-1] + ("0" if DOCUMENTED[-1] != "0" else "1"),
    ],
)
def test_a_changed_time_nonce_or_digest_does_not_match(header: str) -> None:
    with pytest.raises(BadSignature, match="does not match"):
        check(header)


@pytest.mark.parametrize("offset", [-WINDOW, -1, 0, 1, WINDOW])
def test_a_time_within_the_window_is_accepted(offset: float) -> None:
    assert check(DOCUMENTED, now=T + offset).t == T


@pytest.mark.parametrize("offset", [-WINDOW - 0.5, -WINDOW - 1, WINDOW + 0.5, WINDOW + 1, 86400])
def test_a_time_outside_the_window_is_refused(offset: float) -> None:
    with pytest.raises(BadSignature, match=f"more than {WINDOW} s from now"):
        check(DOCUMENTED, now=T + offset)


def test_the_window_is_five_minutes_and_the_default_clock_is_now() -> None:
    assert WINDOW == 300
    with pytest.raises(BadSignature, match="more than 300 s"):
        check(DOCUMENTED, now=None)


DIGEST = DOCUMENTED.rsplit("=", 1)[1]


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=1,n=00,v1=00",
        f"t={T},n={NONCE}",
        f"n={NONCE},t={T},v1={DIGEST}",
        f"t={T},n={NONCE},v1={DIGEST},x=1",
        f"t={T}, n={NONCE}, v1={DIGEST}",
        f"t=-{T},n={NONCE},v1={DIGEST}",
        f"t={T}.5,n={NONCE},v1={DIGEST}",
        f"t=1234567890123456,n={NONCE},v1={DIGEST}",
        f"t={T},n={NONCE.upper()},v1={DIGEST}",
        f"t={T},n={NONCE[:-1]},v1={DIGEST}",
        f"t={T},n={NONCE}0,v1={DIGEST}",
        f"t={T},n={NONCE},v1={DIGEST.upper()}",
        f"t={T},n={NONCE},v1={DIGEST[:-1]}",
        f"t={T},n={NONCE},v2={DIGEST}",
        f"T={T},N={NONCE},V1={DIGEST}",
    ],
)
def test_a_malformed_header_is_refused(header: str) -> None:
    assert parse_signature(header) is None
    with pytest.raises(BadSignature, match=f"malformed {SIGNATURE_HEADER} header"):
        check(header)


def test_no_header_and_no_secret_are_refused() -> None:
    with pytest.raises(BadSignature, match=f"no {SIGNATURE_HEADER} header") as refused:
        check(None)
    assert refused.value.reason == f"no {SIGNATURE_HEADER} header"
    with pytest.raises(BadSignature, match="no secret is configured"):
        check(DOCUMENTED, secrets=[])


def test_parse_signature_gives_the_parts() -> None:
    assert parse_signature(DOCUMENTED) == Signature(T, NONCE, DIGEST)


def test_a_replayed_nonce_is_refused_and_only_matching_signatures_are_remembered() -> None:
    seen: list[tuple[str, int]] = []

    def remember(nonce: str, t: int) -> bool:
        new = nonce not in [n for n, _ in seen]
        seen.append((nonce, t))
        return new

    with pytest.raises(BadSignature, match="does not match"):
        check(DOCUMENTED, remember=remember, body=b"")
    assert seen == []
    assert check(DOCUMENTED, remember=remember).nonce == NONCE
    with pytest.raises(BadSignature, match="already used"):
        check(DOCUMENTED, remember=remember)
    assert seen == [(NONCE, T), (NONCE, T)]


# -- one implementation, shared ------------------------------------------------------------


def test_the_fetcher_and_contrib_use_this_module() -> None:
    from refresherd.contrib import signing as contrib
    from refresherd.fetchers import http

    for name, shared in (("sign_request", "sign"), ("SIGNATURE_HEADER", "SIGNATURE_HEADER")):
        assert getattr(http, name) is getattr(signing, shared)
    for name in ("SIGNATURE_HEADER", "WINDOW", "BadSignature", "Signature", "check_signature"):
        assert getattr(contrib, name) is getattr(signing, name)
    for name in ("digest", "parse_signature", "sign"):
        assert getattr(contrib, name) is getattr(signing, name)
