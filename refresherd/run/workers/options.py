"""What makes a process one of the workers: its internal options and command line."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import attrs

from refresherd.errors import ConfigError

PUBLIC_FD = 3
"""The file descriptor of the public listening socket in a worker."""
LIFELINE_FD = 4
"""The file descriptor of a worker's end of its lifeline."""

FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
"""The address families of the sockets a worker can adopt, by the name its option uses."""

TWISTD = "from twisted.scripts.twistd import run; run()"
"""The program a worker's interpreter runs (C{-c}): twistd, as the parent was started."""


@attrs.frozen
class WorkerOptions:
    """The internal options that make a process one of the workers."""

    id: int
    fd: int
    family: str
    lifeline: int
    config: str | None = None
    """
    After a reload, a file holding the configuration file's contents as the
    parent validated them: read instead of that file, which may have changed since.
    """


WORKER_OPTIONS = ("worker-id", "worker-fd", "worker-family", "worker-lifeline")


def worker_options(options: Mapping[str, Any]) -> WorkerOptions | None:
    """
    The worker options given, or L{None} for a process that is not a worker.
    They are internal (L{Supervisor} passes them); any mistake is a
    L{ConfigError}.
    """
    given = {name: options.get(name) for name in WORKER_OPTIONS}
    if all(value is None for value in given.values()):
        return None
    numbers: dict[str, int] = {}
    for name in ("worker-id", "worker-fd", "worker-lifeline"):
        text = given[name]
        if text is None or not str(text).isdigit():
            raise ConfigError(
                f"--{name}: internal option of --workers, needs a whole number, not {text!r}"
            )
        numbers[name] = int(text)
    family = given["worker-family"]
    if family not in FAMILIES:
        raise ConfigError(
            f"--worker-family: internal option of --workers, one of {', '.join(FAMILIES)}, "
            f"not {family!r}"
        )
    config = options.get("worker-config")
    return WorkerOptions(
        numbers["worker-id"],
        numbers["worker-fd"],
        str(family),
        numbers["worker-lifeline"],
        None if config is None else str(config),
    )


def worker_arguments(
    worker: int,
    family: str,
    plugin_options: list[str],
    reactor_name: str | None,
    config: str | None = None,
) -> list[str]:
    """
    The command line of a worker after the interpreter: twistd with the
    parent's reactor, in the foreground and with no pid file, then the
    plugin with the parent's own options (C{plugin_options}) and the
    internal ones (after a reload, C{config}: the validated contents).
    """
    twistd = ["-P", "-c", TWISTD, "-n", "--pidfile="]
    if reactor_name is not None:
        twistd.append(f"--reactor={reactor_name}")
    return [
        *twistd,
        "refresherd",
        *plugin_options,
        f"--worker-id={worker}",
        f"--worker-fd={PUBLIC_FD}",
        f"--worker-family={family}",
        f"--worker-lifeline={LIFELINE_FD}",
        *([] if config is None else [f"--worker-config={config}"]),
    ]
