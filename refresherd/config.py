"""
The configuration: TOML (SPEC section 3) parsed and validated completely at
start-up into frozen values.  Any mistake is a L{ConfigError} with one line
naming the file, the key and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from refresherd.errors import ConfigError

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_ADMIN_LISTEN = "tcp:8081:interface=127.0.0.1"
DEFAULT_STORE = "memory://"
MIB = 1024 * 1024


@attrs.frozen(repr=False)
class Secret:
    """
    A token, a signing key or a header value.  C{source} is C{"literal"},
    C{"env"} or C{"file"}; values from C{env:} and C{file:} are redacted
    wherever configuration is shown.  The repr never shows the value.
    """

    value: str
    source: str = "literal"

    @property
    def redacted(self) -> bool:
        return self.source != "literal"

    def __repr__(self) -> str:
        return f"Secret(<{self.source}>)"


@attrs.frozen
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    max_body_bytes: int = MIB
    max_batch: int = 100


@attrs.frozen
class StoreConfig:
    url: str = DEFAULT_STORE
    namespace: str = "rfd"


@attrs.frozen
class AuthConfig:
    read_tokens: tuple[Secret, ...] = ()
    write_tokens: tuple[Secret, ...] = ()
    admin_tokens: tuple[Secret, ...] = ()
    metrics_tokens: tuple[Secret, ...] = ()


@attrs.frozen
class JobConfig:
    """One job, every field of SPEC section 3 with its default filled in."""

    name: str
    fresh: float
    fetch: str
    args: tuple[str, ...] = ()
    arg_patterns: Mapping[str, re.Pattern[str]] = attrs.field(factory=dict)
    # fetch = "http"
    url: str | None = None
    method: str = "GET"
    headers: Mapping[str, Secret] = attrs.field(factory=dict)
    body: Any = None
    """The parsed JSON template of a POST body, or None."""
    sign: Secret | None = None
    # fetch = "python"
    callable: str | None = None
    # policy
    stale: float = 0.0
    stale_if_error: float = 0.0
    error_ttl: float = 5.0
    on_miss: str = "wait"
    wait_timeout: float = 5.0
    timeout: float = 10.0
    retries: int = 0
    concurrency: int = 8
    max_queue: int = 100
    tags: tuple[str, ...] = ()
    version: int = 1
    early_refresh: float = 1.0
    max_value_bytes: int = 32 * MIB


@attrs.frozen
class Config:
    source: str
    """The file it was read from, or C{"<defaults>"}."""
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    jobs: Mapping[str, JobConfig] = attrs.field(factory=dict)


def parse_duration(value: object) -> float:
    """
    Seconds from a number or a string such as C{"500ms"}, C{"30s"}, C{"15m"},
    C{"2h"}, C{"7d"}; L{ValueError} otherwise.
    """
    raise NotImplementedError


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """
    Read and validate the configuration file at C{path}; with C{None}, read
    C{./refresherd.toml} if it exists, else return the built-in defaults.
    Raise L{ConfigError} with one line on any mistake.
    """
    raise NotImplementedError
