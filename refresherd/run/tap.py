"""
The twistd plugin's options and entry point.

Every option is taken as text and checked while the service is built
(L{refresherd.run.build}), so that any mistake in the configuration, an
option or an endpoint (a port in use included) stops start-up with one line
and exit status 1: twistd would print its whole usage text for a
C{UsageError} and a traceback for an exception in C{startService}.  This is
the only module that touches the global reactor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from refresherd import __version__
from refresherd.errors import ConfigError
from refresherd.run.build import build

_INTERNAL = "internal, set by --workers for its worker processes"


class Options(usage.Options):
    """refresherd's options; see README.md ("Running it")."""

    synopsis = "[options]"
    longdesc = f"refresherd {__version__}"
    optParameters = [
        ["config", None, None, "TOML configuration file [default: ./refresherd.toml if present]"],
        ["listen", None, None, "public API endpoint [default: tcp:8080:interface=127.0.0.1]"],
        [
            "admin-listen",
            None,
            None,
            "admin API and /metrics endpoint, or 'none' to serve them on the public listener "
            "[default: tcp:8081:interface=127.0.0.1]",
        ],
        [
            "store",
            None,
            None,
            "memory://[?max_bytes=N], redis://[[user]:password@]host:port/db (rediss:// for TLS, "
            "unix:///path/redis.sock?db=N), "
            "redis+sentinel://host:port[,host:port...]/SERVICE/db (rediss+sentinel:// for TLS) or "
            "memcached://host:port[,host:port...][?item_limit=N] [default: memory://]",
        ],
        [
            "workers",
            None,
            "1",
            "processes sharing the public listener (TCP or UNIX; needs a shared store)",
        ],
        ["log-format", None, "text", "text or json (one object per line)"],
        ["worker-id", None, None, f"{_INTERNAL}: the worker's number"],
        ["worker-fd", None, None, f"{_INTERNAL}: the inherited listening socket"],
        ["worker-family", None, None, f"{_INTERNAL}: its address family, inet, inet6 or unix"],
        ["worker-lifeline", None, None, f"{_INTERNAL}: the lifeline to the parent"],
        [
            "worker-config",
            None,
            None,
            f"{_INTERNAL}: the configuration file's contents as the parent validated them",
        ],
    ]


def makeService(options: Mapping[str, Any]) -> IService:
    """twistd's entry point: the service, or one line and exit status 1."""
    from twisted.internet import reactor

    try:
        return build(options, reactor, os.environ)
    except ConfigError as e:
        raise SystemExit(f"refresherd: {e}") from None
