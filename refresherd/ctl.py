"""
C{refresherctl}, the operator's command line (docs/admin.md, "`refresherctl`"), on
L{refresherd.client}.

    refresherctl [--url URL] [--public-url URL] [--token TOKEN] [--json] [--timeout S] COMMAND ...

The common options may stand before or after the command: the group and every
command take them all, and a value given after the command wins.  Everything
runs in L{run}, which takes its streams, its environment and its HTTP
transport as parameters, so that it is tested without a network; L{main} is
the console script.  Exit status: 0 on success, 1 when the service answers an
error or cannot be reached (one line on stderr, never a traceback), 2 on a
usage error.

This module is the client side: it imports nothing of the server but
L{refresherd.client}.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, TextIO, TypeVar, cast

import attrs
import click
import httpx

from refresherd import __version__
from refresherd.client import (
    DEFAULT_ADMIN_URL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    BadResponse,
    Client,
    RefresherdClientError,
    check_base_url,
)

PROG = "refresherctl"
ADMIN_URL_ENV = "REFRESHERD_ADMIN_URL"
URL_ENV = "REFRESHERD_URL"
TOKEN_ENV = "REFRESHERD_TOKEN"
REDACTED = "<redacted>"
_MIN_REDACTED = 4
"""Tokens shorter than this are not searched for in messages (they would mangle them)."""

F = TypeVar("F", bound=Callable[..., Any])


@attrs.define
class _Run:
    """One run of the command line: its streams, environment, transport and the options given."""

    stdout: IO[str]
    stderr: IO[str]
    environ: Mapping[str, str]
    transport: httpx.BaseTransport | None
    given: dict[str, Any] = attrs.Factory(dict)
    stdin: IO[str] = sys.stdin
    """The common options given on the command line; the command's own override the group's."""

    @property
    def json(self) -> bool:
        return bool(self.given.get("json_output", False))

    def _setting(self, name: str, option: str, env: str, default: str) -> tuple[str, str]:
        """A setting and where it came from: the option, the environment or C{default}."""
        given = self.given.get(name)
        if given is not None:
            return given, option
        from_env = self.environ.get(env)
        if from_env:
            return from_env, f"${env}"
        return default, option

    def client(self, ctx: click.Context) -> Client:
        """A client for the settings of this run; a bad URL or token is a usage error."""
        urls = []
        for name, option, env, default in (
            ("public_url", "--public-url", URL_ENV, DEFAULT_URL),
            ("url", "--url", ADMIN_URL_ENV, DEFAULT_ADMIN_URL),
        ):
            url, source = self._setting(name, option, env, default)
            try:
                urls.append(check_base_url(url))
            except ValueError as e:
                raise click.UsageError(f"{source}: {e}", ctx) from None
        token = self.token()
        try:
            return Client(
                url=urls[0],
                admin_url=urls[1],
                token=token,
                timeout=self.given.get("timeout", DEFAULT_TIMEOUT),
                transport=self.transport,
            )
        except ValueError as e:
            # Never the token itself in the message.
            raise click.UsageError(f"--token or ${TOKEN_ENV}: {e}", ctx) from None

    def token(self) -> str | None:
        given = self.given.get("token")
        if given is not None:
            return str(given) or None
        return self.environ.get(TOKEN_ENV) or None

    def out(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def print_json(self, document: Any) -> None:
        self.out(json.dumps(document, indent=2))

    def write_bytes(self, data: bytes) -> None:
        """C{data} on stdout as bytes, which needs a stdout with a binary C{buffer}."""
        buffer = getattr(self.stdout, "buffer", None)
        if buffer is None:
            raise click.ClickException(
                f"the value is binary ({len(data)} bytes) and stdout takes only text; use --json"
            )
        self.stdout.flush()
        buffer.write(data)
        buffer.flush()


def _state(ctx: click.Context) -> _Run:
    state = ctx.find_object(_Run)
    assert state is not None, "the command line runs through run()"
    return state


# -- common options -----------------------------------------------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep a common option given on the command line; a later one (the command's) wins."""
    if value is None or value is False or ctx.resilient_parsing:
        return
    assert param.name is not None
    _state(ctx).given[param.name] = value


def _show_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        _state(ctx).stdout.write(ctx.get_help() + "\n")
        ctx.exit(0)


_COMMON_OPTIONS = (
    click.option(
        "--url",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help=f"The admin listener [${ADMIN_URL_ENV} or {DEFAULT_ADMIN_URL}].",
    ),
    click.option(
        "--public-url",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help=f"The public listener, used by get [${URL_ENV} or {DEFAULT_URL}].",
    ),
    click.option(
        "--token",
        metavar="TOKEN",
        expose_value=False,
        callback=_remember,
        help=f"A bearer token [${TOKEN_ENV}].",
    ),
    click.option(
        "--json",
        "json_output",
        is_flag=True,
        default=False,
        expose_value=False,
        callback=_remember,
        help="Print the service's JSON, for scripts.",
    ),
    click.option(
        "--timeout",
        metavar="S",
        type=click.FloatRange(min=0, min_open=True),
        expose_value=False,
        callback=_remember,
        help=f"Seconds to wait for the service [{DEFAULT_TIMEOUT:g}].",
    ),
    click.option(
        "-h",
        "--help",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_show_help,
        help="Show this message and exit.",
    ),
)


def _common(f: F) -> F:
    """Give a command (or the group) every common option."""
    for option in reversed(_COMMON_OPTIONS):
        f = option(f)
    return f


_SETTINGS: dict[str, Any] = {"help_option_names": []}
"""The help option is one of L{_COMMON_OPTIONS}, so that it writes to the run's stdout."""


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        _state(ctx).stdout.write(f"{PROG} {__version__}\n")
        ctx.exit(0)


@click.group(name=PROG, context_settings=_SETTINGS, no_args_is_help=False)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@_common
def cli() -> None:
    """Operate a refresherd: purge, inspect, refresh, warm, list its jobs and hot keys."""


def _arguments(ctx: click.Context, pairs: Sequence[str]) -> dict[str, str]:
    """The job arguments of C{ARG=VALUE} words; anything else is a usage error."""
    arguments: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.UsageError(f"expected ARG=VALUE, got {pair!r}", ctx)
        if name in arguments:
            raise click.UsageError(f"argument {name!r} is given more than once", ctx)
        arguments[name] = value
    return arguments


# -- commands -----------------------------------------------------------------------------


@cli.command(context_settings=_SETTINGS)
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Purge the values tagged TAG.")
@click.option("--job", "jobs", multiple=True, metavar="JOB", help="Purge every value of JOB.")
@click.option("--soft", is_flag=True, help="Mark stale (refreshed when next asked) instead.")
@_common
@click.pass_context
def purge(
    ctx: click.Context,
    keys: tuple[str, ...],
    tags: tuple[str, ...],
    jobs: tuple[str, ...],
    soft: bool,
) -> None:
    """Purge entries by key, tag or job.

    Purges the entries of the KEYs, and every value of each --job JOB and each
    --tag TAG (both repeatable); they may be combined.
    """
    if not (keys or tags or jobs):
        raise click.UsageError("nothing to purge: name keys, --tag TAG or --job JOB", ctx)
    state = _state(ctx)
    with state.client(ctx) as client:
        purged = client.purge(keys=keys, jobs=jobs, tags=tags, soft=soft)
    if state.json:
        state.print_json({"purged": purged})
    else:
        state.out(f"purged {purged}")


@cli.command(context_settings=_SETTINGS)
@click.argument("job")
@click.argument("pairs", nargs=-1, metavar="[ARG=VALUE]...")
@_common
@click.pass_context
def get(ctx: click.Context, job: str, pairs: tuple[str, ...]) -> None:
    """Fetch a value as a client would and print it.

    JOB's arguments are ARG=VALUE words; the request goes to the public listener.
    """
    arguments = _arguments(ctx, pairs)
    state = _state(ctx)
    with state.client(ctx) as client:
        answer = client.get(job, arguments)
    if state.json:
        state.print_json(answer)
    else:
        _print_value(state, answer)


def _is_json(content_type: str) -> bool:
    """C{application/json} or any C{+json} type, parameters ignored."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _print_value(state: _Run, answer: Mapping[str, Any]) -> None:
    """The value of an answer alone on stdout; notes (pending, stale with an error) on stderr."""
    if answer.get("status") == "pending":
        state.stderr.write(
            f"{PROG}: pending: no value yet for {answer.get('key')}; it is being fetched\n"
        )
        return
    if answer.get("error"):
        state.stderr.write(f"{PROG}: warning: a stale value is served: {answer['error']}\n")
    if "value_b64" in answer:
        try:
            data = base64.b64decode(str(answer["value_b64"]), validate=True)
        except binascii.Error:
            raise BadResponse("the answer's value_b64 is not base64") from None
        state.write_bytes(data)
        return
    if "value" not in answer:
        raise BadResponse("the answer has no value")
    value = answer["value"]
    content_type = str(answer.get("content_type") or "")
    if isinstance(value, str) and not _is_json(content_type):
        state.stdout.write(value)
    else:
        state.out(json.dumps(value, indent=2, ensure_ascii=False))


@cli.command(context_settings=_SETTINGS)
@click.argument("key")
@click.option("--value", "with_value", is_flag=True, help="Show the stored value too.")
@_common
@click.pass_context
def inspect(ctx: click.Context, key: str, with_value: bool) -> None:
    """Print the metadata of the entry stored at KEY."""
    state = _state(ctx)
    with state.client(ctx) as client:
        entry = client.inspect(key, value=with_value)
    if state.json:
        state.print_json(entry)
        return
    width = max((len(name) for name in entry), default=0)
    for name, value in entry.items():
        state.out(f"{name:<{width}}  {_field(name, value)}".rstrip())


def _number(value: float) -> str:
    """A number of seconds as written in a configuration: C{900}, C{0.5}."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _field(name: str, value: Any) -> str:
    """One value of C{inspect}, on one line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = _number(value)
        if name.endswith(("_at", "_until")) and value > 0:
            # A time in Unix seconds, with its UTC date (0 stands for "never").
            try:
                when = datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                return text
            return f"{text} ({when.isoformat(timespec='seconds').replace('+00:00', 'Z')})"
        return text
    if isinstance(value, str) and value and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False)


@cli.command(context_settings=_SETTINGS)
@click.argument("job")
@click.argument("pairs", nargs=-1, metavar="[ARG=VALUE]...")
@_common
@click.pass_context
def refresh(ctx: click.Context, job: str, pairs: tuple[str, ...]) -> None:
    """Start a refresh now.

    JOB's arguments are ARG=VALUE words; the refresh is deduplicated like any other.
    """
    arguments = _arguments(ctx, pairs)
    state = _state(ctx)
    with state.client(ctx) as client:
        answer = client.refresh(job, arguments)
    if state.json:
        state.print_json(answer)
    else:
        state.out(f"refreshing {answer.get('key')}")


WARM_BATCH = 100
"""Argument sets sent in one C{POST /v1/jobs/{job}/warm} (the most the service takes)."""
WARM_TIMEOUT = 300.0
"""Seconds a batch of C{warm} may take, unless C{--timeout} is given: it answers when done."""
WARM_FAILURES_LISTED = 20
INTERRUPTED = 130


@cli.command(context_settings=_SETTINGS)
@click.argument("job")
@click.argument("pairs", nargs=-1, metavar="[ARG=VALUE]...")
@click.option(
    "--file",
    "path",
    metavar="ARGS.jsonl",
    help="One JSON object of arguments a line (# comments, blank lines); - for stdin.",
)
@_common
@click.pass_context
def warm(ctx: click.Context, job: str, pairs: tuple[str, ...], path: str | None) -> int:
    """Make values ready: fetch each argument set's value unless it is fresh.

    One argument set from ARG=VALUE words, or one per line of --file (the format
    of a job's warm_file). Sent in batches of 100; exit status 1 if any failed,
    130 when interrupted (what is fresh is skipped when run again).
    """
    if path is not None and pairs:
        raise click.UsageError("give ARG=VALUE words or --file, not both", ctx)
    state = _state(ctx)
    sets = [_arguments(ctx, pairs)] if path is None else _warm_file(state, path)
    tally = _WarmTally()
    timeout = state.given.get("timeout", WARM_TIMEOUT)
    with state.client(ctx) as client, _WarmProgress(state, job, len(sets)) as progress:
        try:
            for start in range(0, len(sets), WARM_BATCH):
                batch = sets[start : start + WARM_BATCH]
                tally.add(batch, client.warm(job, batch, timeout=timeout))
                progress.batch(len(batch), tally)
        except KeyboardInterrupt:
            progress.close()
            tally.report(state, job, interrupted=True)
            return INTERRUPTED
        except RefresherdClientError:
            progress.close()
            if tally.results:
                tally.report(state, job)
            raise
    tally.report(state, job)
    return 1 if tally.counts["failed"] else 0


def _warm_file(state: _Run, path: str) -> list[dict[str, Any]]:
    """The argument sets of a warm file (C{-}: stdin); a line that is not one stops here."""
    try:
        if path == "-":
            text = state.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise click.ClickException(f"{path}: cannot read: {reason}") from None
    sets = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            arguments = json.loads(line)
        except ValueError as e:
            raise click.ClickException(f"{path} line {number}: not a JSON object: {e}") from None
        if not isinstance(arguments, dict):
            raise click.ClickException(f"{path} line {number}: not a JSON object of arguments")
        sets.append(arguments)
    return sets


@attrs.define
class _WarmTally:
    """What the warm batches answered so far, and the failures with their arguments."""

    counts: dict[str, int] = attrs.Factory(
        lambda: {"done": 0, "fresh": 0, "not_stored": 0, "failed": 0}
    )
    results: list[dict[str, Any]] = attrs.Factory(list)
    failures: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = attrs.Factory(list)

    def add(self, batch: Sequence[Mapping[str, Any]], results: list[dict[str, Any]]) -> None:
        for arguments, result in zip(batch, results, strict=True):
            self.results.append(result)
            kind = result["result"]
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if kind == "failed":
                self.failures.append((arguments, result))

    def line(self) -> str:
        c = self.counts
        return (
            f"{c['done']} done, {c['fresh']} already fresh, {c['not_stored']} not stored, "
            f"{c['failed']} failed"
        )

    def report(self, state: _Run, job: str, interrupted: bool = False) -> None:
        if state.json:
            state.print_json({"job": job, "results": self.results})
            return
        state.out(("interrupted: " if interrupted else "") + self.line())
        for arguments, result in self.failures[:WARM_FAILURES_LISTED]:
            reason = f"{result.get('code') or 'failed'}: {result.get('error') or ''}".rstrip(": ")
            state.out(f"  {json.dumps(arguments, ensure_ascii=False)}: {reason}")
        more = len(self.failures) - WARM_FAILURES_LISTED
        if more > 0:
            state.out(f"  and {more} more failed")


@attrs.define
class _WarmProgress:
    """A progress bar on a terminal, else one plain line per batch."""

    state: _Run
    job: str
    total: int
    sent: int = 0
    _bar: Any = None

    def __enter__(self) -> _WarmProgress:
        if self.state.stdout.isatty() and not self.state.json:
            self._bar = click.progressbar(
                length=self.total,
                label=f"warming {self.job}",
                file=cast(TextIO, self.state.stdout),
            )
            self._bar.__enter__()
        return self

    def batch(self, size: int, tally: _WarmTally) -> None:
        self.sent += size
        if self._bar is not None:
            self._bar.update(size)
        elif not self.state.json:
            self.state.out(f"{self.sent}/{self.total}: {tally.line()}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __exit__(self, *exc_info: object) -> None:
        self.close()


JOB_COLUMNS = ("NAME", "FETCH", "ARGS", "FRESH", "STALE", "TAGS")


@cli.command(context_settings=_SETTINGS)
@_common
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """List the configured jobs."""
    state = _state(ctx)
    with state.client(ctx) as client:
        described = client.jobs()
    if state.json:
        state.print_json(described)
        return
    rows = [JOB_COLUMNS, *(_job_row(job) for job in described)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(JOB_COLUMNS))]
    for row in rows:
        state.out(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _job_row(job: Mapping[str, Any]) -> tuple[str, ...]:
    def listed(name: str) -> str:
        items = job.get(name) or []
        return ",".join(str(item) for item in items) if isinstance(items, list) and items else "-"

    def seconds(name: str) -> str:
        value = job.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _number(value)
        return "-"

    return (
        str(job.get("name", "-")),
        str(job.get("fetch", "-")),
        listed("args"),
        seconds("fresh"),
        seconds("stale"),
        listed("tags"),
    )


HOT_COLUMNS = ("JOB", "KEY", "RATE")


@cli.command(context_settings=_SETTINGS)
@click.argument("job", required=False)
@click.option("-n", "n", type=click.IntRange(1), metavar="N", help="At most N keys per job.")
@_common
@click.pass_context
def hot(ctx: click.Context, job: str | None, n: int | None) -> None:
    """List the keys requested most lately, per job (only JOB, if given).

    RATE is requests per second, each request counting half after the half-life.
    """
    state = _state(ctx)
    with state.client(ctx) as client:
        jobs = client.hot(job, n)
    if state.json:
        state.print_json({"jobs": jobs})
        return
    rows = [HOT_COLUMNS]
    for name in sorted(jobs):
        for hot_key in jobs[name]:
            rate = hot_key.get("rate")
            shown = f"{rate:.3f}" if isinstance(rate, int | float) else "-"
            rows.append((name, str(hot_key.get("key", "-")), shown))
    widths = [max(len(row[column]) for row in rows) for column in range(len(HOT_COLUMNS))]
    for row in rows:
        state.out(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@cli.command(context_settings=_SETTINGS)
@_common
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Have the service read its configuration file again.

    It is validated in full first: refused, the service keeps the configuration it has,
    and the reason is printed.
    """
    state = _state(ctx)
    with state.client(ctx) as client:
        answer = client.reload()
    if state.json:
        state.print_json(answer)
        return
    jobs = answer.get("jobs")
    listed = ", ".join(str(job) for job in jobs) if isinstance(jobs, list) else "-"
    state.out(f"reloaded {answer.get('source')}: {listed or 'no jobs'}")
    for what in ("added", "changed", "removed", "new_keys"):
        names = answer.get(what)
        if isinstance(names, list) and names:
            state.out(f"  {what.replace('_', ' ')}: {', '.join(str(name) for name in names)}")
    if answer.get("tokens"):
        state.out("  tokens changed")


# -- running ------------------------------------------------------------------------------


def _secrets(argv: Sequence[str], environ: Mapping[str, str]) -> set[str]:
    """Every token in the command line or the environment, to keep out of messages."""
    found = {environ.get(TOKEN_ENV, "")}
    for i, word in enumerate(argv):
        if word == "--token" and i + 1 < len(argv):
            found.add(argv[i + 1])
        elif word.startswith("--token="):
            found.add(word.removeprefix("--token="))
    return {token for token in found if len(token) >= _MIN_REDACTED}


def _one_line(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return " ".join(text.split())


def run(
    argv: Sequence[str],
    *,
    stdout: IO[str],
    stderr: IO[str],
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    stdin: IO[str] | None = None,
) -> int:
    """
    Run C{refresherctl} with the words C{argv} and return its exit status.
    C{environ} supplies C{$REFRESHERD_URL}, C{$REFRESHERD_ADMIN_URL} and
    C{$REFRESHERD_TOKEN} (none when C{None}); C{transport} replaces the network;
    C{stdin} is what C{warm --file -} reads (the process's when C{None}).
    """
    state = _Run(
        stdout, stderr, {} if environ is None else environ, transport, stdin=stdin or sys.stdin
    )
    secrets = _secrets(argv, state.environ)

    def hidden() -> set[str]:
        given = state.token()
        return secrets | ({given} if given and len(given) >= _MIN_REDACTED else set())

    def fail(message: str) -> None:
        stderr.write(f"{PROG}: {_one_line(message, hidden())}\n")

    try:
        result = cli.main(list(argv), prog_name=PROG, standalone_mode=False, obj=state)
    except click.UsageError as e:
        if e.ctx is not None:
            stderr.write(e.ctx.get_usage() + "\n")
            stderr.write(f"Try '{e.ctx.command_path} --help' for help.\n\n")
        stderr.write(f"Error: {_one_line(e.format_message(), hidden())}\n")
        return e.exit_code
    except click.ClickException as e:
        fail(e.format_message())
        return e.exit_code
    except click.Abort:
        fail("aborted")
        return 1
    except RefresherdClientError as e:
        fail(str(e))
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    """The C{refresherctl} console script."""
    sys.exit(run(sys.argv[1:], stdout=sys.stdout, stderr=sys.stderr, environ=os.environ))
