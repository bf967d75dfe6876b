"""
Bearer tokens (docs/README.md, "Authentication"; docs/configuration.md, "`[auth]`"):
who may read, write, administer and scrape.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import pytest
from twisted.web.http_headers import Headers

from refresherd.config import AuthConfig, Secret
from refresherd.errors import Forbidden, Unauthorized
from refresherd.http.auth import ADMIN, READ, READERS, WRITE, WRITERS, Authorizer

ALL = Authorizer(
    (
        (b"r-token", "read"),
        (b"w-token", "write"),
        (b"a-token", "admin"),
        (b"m-token", "metrics"),
    )
)


def bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"r-token",
        b"Basic r-token",
        b"Token r-token",
        b"Bearer: r-token",
        b"Bearer nope",
        b"Bearer r-tokenX",
        b"Bearer r-toke",
        b"Bearer R-TOKEN",
        b"Bearer r-token w-token",
    ],
)
def test_missing_malformed_other_scheme_or_unknown_token_is_unauthorized(
    header: bytes | None,
) -> None:
    with pytest.raises(Unauthorized):
        ALL.require(header, frozenset({READ, WRITE, ADMIN, "metrics"}))


def test_unauthorized_and_forbidden_carry_their_documented_codes() -> None:
    with pytest.raises(Unauthorized) as unauthorized:
        ALL.require(None, READERS)
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
    with pytest.raises(Forbidden) as forbidden:
        ALL.require(bearer("m-token"), READERS)
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")


@pytest.mark.parametrize(
    ("token", "allowed"),
    [
        ("r-token", frozenset({WRITE, ADMIN})),
        ("w-token", frozenset({ADMIN})),
        ("m-token", frozenset({READ, WRITE, ADMIN})),
        ("a-token", frozenset({"metrics"})),
        ("r-token", frozenset()),
    ],
)
def test_known_token_of_a_class_not_allowed_is_forbidden(
    token: str, allowed: frozenset[str]
) -> None:
    with pytest.raises(Forbidden):
        ALL.require(bearer(token), allowed)


@pytest.mark.parametrize(
    ("token", "allowed"),
    [
        ("r-token", frozenset({READ})),
        ("w-token", frozenset({WRITE, ADMIN})),
        ("a-token", frozenset({ADMIN})),
        ("m-token", frozenset({"metrics", ADMIN})),
    ],
)
def test_token_of_an_allowed_class_passes(token: str, allowed: frozenset[str]) -> None:
    ALL.require(bearer(token), allowed)


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: bytes) -> None:
    ALL.require(scheme + b" a-token", frozenset({ADMIN}))


def test_token_itself_is_case_sensitive() -> None:
    with pytest.raises(Unauthorized):
        ALL.require(b"Bearer A-TOKEN", frozenset({ADMIN}))


def test_surrounding_white_space_in_the_header_is_ignored() -> None:
    ALL.require(b"  Bearer   a-token  ", frozenset({ADMIN}))


# check_read


@pytest.mark.parametrize("header", [None, b"", b"Bearer whatever", b"Basic abc"])
def test_reads_are_open_when_no_read_token_is_configured(header: bytes | None) -> None:
    authorizer = Authorizer(((b"w-token", WRITE), (b"a-token", ADMIN), (b"m-token", "metrics")))
    authorizer.check_read(header)


@pytest.mark.parametrize("token", ["r-token", "w-token", "a-token"])
def test_reads_accept_read_write_and_admin_tokens(token: str) -> None:
    ALL.check_read(bearer(token))


def test_reads_refuse_a_metrics_token_when_read_tokens_are_configured() -> None:
    with pytest.raises(Forbidden):
        ALL.check_read(bearer("m-token"))


@pytest.mark.parametrize("header", [None, b"Bearer unknown"])
def test_reads_need_a_token_when_read_tokens_are_configured(header: bytes | None) -> None:
    with pytest.raises(Unauthorized):
        Authorizer(((b"r-token", READ),)).check_read(header)


# check_write


@pytest.mark.parametrize("header", [None, b"Bearer r-token", b"Bearer m-token"])
def test_writes_are_forbidden_when_neither_write_nor_admin_tokens_are_configured(
    header: bytes | None,
) -> None:
    authorizer = Authorizer(((b"r-token", READ), (b"m-token", "metrics")))
    with pytest.raises(Forbidden):
        authorizer.check_write(header)


def test_writes_are_forbidden_with_no_tokens_at_all() -> None:
    with pytest.raises(Forbidden):
        Authorizer(()).check_write(None)


@pytest.mark.parametrize("token", ["w-token", "a-token"])
def test_writes_accept_write_and_admin_tokens(token: str) -> None:
    ALL.check_write(bearer(token))


def test_writes_accept_an_admin_token_when_only_admin_tokens_are_configured() -> None:
    Authorizer(((b"a-token", ADMIN),)).check_write(bearer("a-token"))


@pytest.mark.parametrize("token", ["r-token", "m-token"])
def test_writes_refuse_read_and_metrics_tokens(token: str) -> None:
    with pytest.raises(Forbidden):
        ALL.check_write(bearer(token))


@pytest.mark.parametrize("header", [None, b"Bearer unknown"])
def test_writes_need_a_known_token_when_writes_are_enabled(header: bytes | None) -> None:
    with pytest.raises(Unauthorized):
        ALL.check_write(header)


def test_readers_and_writers_are_the_documented_classes() -> None:
    assert frozenset({"read", "write", "admin"}) == READERS
    assert frozenset({"write", "admin"}) == WRITERS


# Constant-time comparison


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bytes, bytes]]]:
    """Every pair given to C{hmac.compare_digest} by refresherd.http.auth."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("refresherd.http.auth.hmac.compare_digest", counting)
    yield calls


@pytest.mark.parametrize("token", ["r-token", "w-token", "a-token", "m-token", "unknown"])
def test_every_configured_token_is_compared_in_constant_time(
    compared: list[tuple[bytes, bytes]], token: str
) -> None:
    try:
        ALL.check_read(bearer(token))
    except (Unauthorized, Forbidden):
        pass
    known = {known for known, _ in ALL.tokens}
    assert len(compared) == len(ALL.tokens)
    assert {pair[0] for pair in compared} == known
    assert all(pair[1] == token.encode() for pair in compared)


def test_the_first_configured_token_matching_does_not_end_the_comparisons(
    compared: list[tuple[bytes, bytes]],
) -> None:
    ALL.require(bearer("r-token"), READERS)
    assert [known for known, _ in compared] == [known for known, _ in ALL.tokens]


# From configuration


def test_from_config_gives_each_secret_its_class() -> None:
    auth = AuthConfig(
        read_tokens=(Secret("r1"), Secret("r2", source="env")),
        write_tokens=(Secret("w1", source="file"),),
        admin_tokens=(Secret("a1"),),
        metrics_tokens=(Secret("m1"),),
    )
    authorizer = Authorizer.from_config(auth)
    assert sorted(authorizer.tokens) == sorted(
        [
            (b"r1", "read"),
            (b"r2", "read"),
            (b"w1", "write"),
            (b"a1", "admin"),
            (b"m1", "metrics"),
        ]
    )
    authorizer.check_read(b"Bearer r2")
    authorizer.check_write(b"Bearer w1")
    authorizer.require(b"Bearer a1", frozenset({ADMIN}))
    authorizer.require(b"Bearer m1", frozenset({"metrics"}))
    with pytest.raises(Forbidden):
        authorizer.check_write(b"Bearer r1")


def test_from_an_empty_config_reads_are_open_and_writes_off() -> None:
    authorizer = Authorizer.from_config(AuthConfig())
    assert authorizer.tokens == ()
    authorizer.check_read(None)
    with pytest.raises(Forbidden):
        authorizer.check_write(b"Bearer anything")


def test_a_token_configured_in_two_classes_has_both() -> None:
    """A token listed as write and metrics may both write and read metrics."""
    authorizer = Authorizer.from_config(
        AuthConfig(write_tokens=(Secret("both"),), metrics_tokens=(Secret("both"),))
    )
    authorizer.require(bearer("both"), WRITERS)
    authorizer.require(bearer("both"), frozenset({"metrics"}))
    with pytest.raises(Forbidden):
        authorizer.require(bearer("both"), frozenset({ADMIN}))


# What a request's head decides before its body is read (refresherd.http.site)


def head(*authorization: bytes) -> Headers:
    return Headers({b"Authorization": list(authorization)} if authorization else {})


@pytest.mark.parametrize("method", [b"PUT", b"put", b"Put"])
def test_a_put_head_needs_a_write_token_whatever_the_case_of_its_method(method: bytes) -> None:
    with pytest.raises(Unauthorized):
        ALL.check_head(method, head())
    with pytest.raises(Forbidden):
        ALL.check_head(method, head(bearer("r-token")))
    ALL.check_head(method, head(bearer("w-token")))
    ALL.check_head(method, head(bearer("a-token")))


def test_a_put_head_is_forbidden_when_writes_are_off() -> None:
    with pytest.raises(Forbidden):
        Authorizer(((b"r-token", "read"),)).check_head(b"PUT", head(bearer("r-token")))


def test_a_put_head_is_judged_by_its_last_authorization_as_its_route_judges_it() -> None:
    with pytest.raises(Unauthorized):
        ALL.check_head(b"PUT", head(bearer("w-token"), bearer("nope")))
    ALL.check_head(b"PUT", head(bearer("nope"), bearer("w-token")))


@pytest.mark.parametrize("method", [b"POST", b"GET", b"DELETE", b"PATCH"])
def test_a_head_of_another_method_is_left_to_its_route(method: bytes) -> None:
    ALL.check_head(method, head())
    ALL.check_head(method, head(bearer("nope")))
