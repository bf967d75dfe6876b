"""
The settings a process runs with: the configuration file with the command
line applied, each setting with where it came from (for one-line errors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from refresherd.config import DEFAULT_PATH, Config, load_config, read_bytes
from refresherd.errors import ConfigError
from refresherd.run.workers.options import WorkerOptions, worker_options


@attrs.frozen
class Setting:
    """One setting's text and where it came from (an option, or the file and its key)."""

    value: str
    where: str


@attrs.frozen
class Settings:
    """The configuration with the command line applied."""

    config: Config
    listen: Setting
    admin_listen: Setting
    store: Setting
    workers: int
    log_format: str
    worker: WorkerOptions | None = None
    """In a worker process, what its parent told it."""
    log_file: str | None = None
    """
    The file twistd logs to (C{--logfile}, or C{twistd.log} when it runs as a
    daemon); None: standard output.
    """

    @property
    def admin_mounted(self) -> bool:
        """Whether the admin API is served on the public listener (C{--admin-listen none})."""
        return self.admin_listen.value == "none"


def settings_from(
    options: Mapping[str, Any], environ: Mapping[str, str], contents: bytes | None = None
) -> Settings:
    """
    The settings of twistd's C{options}: L{ConfigError} naming the first
    mistake.  C{contents}: the configuration file's, already read (a reload);
    in a worker told so, those its parent validated (L{WorkerOptions.config}).
    """
    worker = worker_options(options)
    path = options.get("config")
    if contents is None and worker is not None and worker.config is not None:
        contents = read_validated(worker.config)
    config = load_config(path, environ, read_file=_reading(path, contents))
    source = config.source

    def pick(option: str, key: str, value: str) -> Setting:
        given = options.get(option)
        return (
            Setting(given, f"--{option}")
            if given is not None
            else Setting(value, f"{source}: {key}")
        )

    workers_text = options.get("workers") or "1"
    if not workers_text.isdigit() or int(workers_text) < 1:
        raise ConfigError(f"--workers: not a positive whole number: {workers_text!r}")
    log_format = options.get("log-format") or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format: must be 'text' or 'json', not {log_format!r}")
    return Settings(
        config=config,
        listen=pick("listen", "server.listen", config.server.listen),
        admin_listen=pick("admin-listen", "server.admin_listen", config.server.admin_listen),
        store=pick("store", "store.url", config.store.url),
        workers=int(workers_text),
        log_format=log_format,
        worker=worker,
        log_file=twistd_log_file(options),
    )


def twistd_log_file(options: Mapping[str, Any]) -> str | None:
    """
    Where twistd would write its log: the C{--logfile} given, C{twistd.log}
    for a daemon without one, None for standard output (C{--logfile -}, or
    C{-n} without one), as twistd's own logger decides.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    name = parent.get("logfile")
    if name == "-" or (parent.get("nodaemon") and not name):
        return None
    return str(name or "twistd.log")


def _reading(path: str | None, contents: bytes | None) -> Callable[[str], bytes]:
    """How to read files: the configuration file's C{contents} if given, the others as they are."""
    if contents is None:
        return read_bytes
    wanted = DEFAULT_PATH if path is None else path
    return lambda file: contents if file == wanted else read_bytes(file)


def read_validated(path: str) -> bytes:
    """The configuration a worker's parent validated (L{WorkerOptions.config})."""
    try:
        return read_bytes(path)
    except OSError as e:
        raise ConfigError(f"--worker-config: cannot read {path!r}: {e.strerror or e}") from None


def require_shared_store(settings: Settings) -> None:
    """
    C{--workers} with more than one worker needs a store the workers share:
    with C{memory://} each would hold a cache of its own, and a value would
    be fetched once per worker.  Every other scheme goes on to the store
    factory, which knows whether it exists.
    """
    if settings.workers <= 1 or settings.store.value.partition("://")[0] != "memory":
        return
    raise ConfigError(
        f"--workers {settings.workers}: needs a shared store; with memory:// each worker "
        "would hold its own cache"
    )
