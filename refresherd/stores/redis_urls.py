"""
The URLs of the Redis store (docs/redis.md, "Connecting"):

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ca=...&cert=...&key=...&server_name=...]
    unix://[[user]:password@]/path/to/redis.sock[?db=N]

L{redis_store_from_url} turns one into a L{RedisStore}, not started.  Its
parts are small functions other URL schemes of Redis use too:
L{credentials} (a user name, a password, C{env:NAME}), L{url_options} (a
query of known options) and L{refresherd.stores.tls.tls_options}.  Anything
wrong is a L{ValueError} whose message is one line and never shows a password
(nor any part of the URL that could be one).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

from refresherd.stores.reader import DEFAULT_MAX_ENTRY_BYTES
from refresherd.stores.redis import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, RedisStore
from refresherd.stores.tls import TLS_OPTIONS, tls_options

SCHEMES = ("redis", "rediss", "unix")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DB = re.compile(r"[0-9]{1,9}")
_ENCODE = " (percent-encode any of : / ? # @ in the password)"


def redis_store_from_url(
    url: str,
    namespace: str,
    reactor: Any,
    environ: Mapping[str, str],
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> RedisStore:
    """
    The L{RedisStore} of a C{redis://}, C{rediss://} or C{unix://} URL (port
    6379 and db 0 by default), reading entries of at most C{max_entry_bytes},
    with C{namespace}; C{environ} holds the variables C{env:NAME} may name.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError("the redis store URL must start with redis://, rediss:// or unix://")
    what = f"the {scheme} store URL"
    hint = _ENCODE if "@" in url else ""
    if scheme == "unix":
        return _unix_store(url, what, hint, namespace, reactor, environ, max_entry_bytes)
    bad_port = f"{what} needs a port from 1 to 65535 after the host{hint}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(bad_port) from None
    if parts.fragment:
        raise ValueError(f"{what} takes no fragment{hint}")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    if port == 0:
        raise ValueError(bad_port)
    if parts.path not in ("", "/") and not _DB.fullmatch(parts.path[1:]):
        raise ValueError(f"{what} path must be a database number, as in {scheme}://host:6379/0")
    tls = scheme == "rediss"
    options = url_options(
        parts.query,
        TLS_OPTIONS if tls else (),
        what,
        hint="" if tls else " (TLS needs rediss://)",
        hinted=TLS_OPTIONS,
    )
    username, password = credentials(parts.username, parts.password, environ, what)
    host, port = parts.hostname, port or DEFAULT_PORT
    store = RedisStore(
        reactor,
        host,
        port,
        int(parts.path[1:] or 0),
        password,
        namespace,
        max_entry_bytes=max_entry_bytes,
        username=username,
    )
    if tls:
        secure = tls_options(options, host, what)
        tcp = HostnameEndpoint(reactor, host, port, timeout=DEFAULT_CONNECT_TIMEOUT)
        store.endpoint = secure.wrap(tcp)
        store.warning = secure.warning(store.address)
    return store


def _unix_store(
    url: str,
    what: str,
    hint: str,
    namespace: str,
    reactor: Any,
    environ: Mapping[str, str],
    max_entry_bytes: int,
) -> RedisStore:
    """The store of C{unix://[[user]:password@]/path/to/redis.sock[?db=N]}."""
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError:
        raise ValueError(f"{what} cannot be read as a URL{hint}") from None
    if parts.fragment:
        raise ValueError(f"{what} takes no fragment{hint}")
    if parts.netloc.rpartition("@")[2]:
        raise ValueError(
            f"{what} takes no host: unix:///path/to/redis.sock "
            f"or unix://:password@/path/to/redis.sock{hint}"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/" or "\x00" in path:
        raise ValueError(f"{what} needs the socket's absolute path: unix:///path/to/redis.sock")
    options = url_options(parts.query, ("db",), what, hint=" (TLS needs rediss://)")
    db = options.get("db", "0")
    if not _DB.fullmatch(db):
        raise ValueError(f"{what}: db must be a database number, not {db[:20]!r}")
    username, password = credentials(parts.username, parts.password, environ, what)
    return RedisStore(
        reactor,
        path,
        db=int(db),
        password=password,
        namespace=namespace,
        max_entry_bytes=max_entry_bytes,
        endpoint=UNIXClientEndpoint(reactor, path, timeout=DEFAULT_CONNECT_TIMEOUT),
        label=path,
        username=username,
    )


def credentials(
    username: str | None, password: str | None, environ: Mapping[str, str], what: str
) -> tuple[str | None, str | None]:
    """
    The user name and password of a URL's user information, as C{urlsplit}
    gives them (percent-encoded): C{user:password@} (an ACL user),
    C{:password@}, or none.  Both are percent-decoded; a password
    C{env:NAME} is read from C{environ}.  A user name needs a password.
    """
    user = unquote(username) if username else None
    if password is None:
        if username:
            raise ValueError(
                f"{what} gives a user name but no password: write user:password@ "
                "(or :password@ for a password alone)"
            )
        return None, None
    secret = unquote(password)
    if secret == "":
        raise ValueError(f"{what} has an empty password")
    if secret.startswith("env:"):
        name = secret[len("env:") :]
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f'{what}: "env:" needs the name of an environment variable')
        if name not in environ:
            raise ValueError(f"{what}: environment variable {name!r} is not set")
        secret = environ[name]
        if not secret:
            raise ValueError(f"{what}: environment variable {name!r} is empty")
    return user, secret


def url_options(
    query: str,
    known: Collection[str],
    what: str,
    hint: str = "",
    hinted: Collection[str] = TLS_OPTIONS,
) -> dict[str, str]:
    """
    The options of a URL's query (C{name=value&...}, values percent-decoded),
    each of them in C{known}, each given once and with a value.  An unknown
    name is refused with its name only (plus C{hint} when it is one of
    C{hinted}), never its value.
    """
    options: dict[str, str] = {}
    for param in query.split("&") if query else []:
        if not param:
            continue
        name, equals, value = param.partition("=")
        if name not in known:
            takes = f"; it takes {', '.join(known)}" if known else ""
            more = hint if name in hinted else ""
            raise ValueError(f"{what} takes no option {name[:40]!r}{more}{takes}")
        if name in options:
            raise ValueError(f"{what} gives {name} twice")
        if not equals or not value:
            raise ValueError(f"{what}: {name} needs a value ({name}=...)")
        options[name] = unquote(value)
    return options
