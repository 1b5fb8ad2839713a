"""The ``conat`` click group: global options, exit codes, error reporting, and the event loop.

Exit codes (one table for every command; see :func:`exit_code_for`)::

    0    ok (also: Ctrl-C stopping `sub`, `reply`, `server`, `up`)
    1    usage error, bad subject, payload error, or any other local failure
    2    remote error: the handler replied with an error
    3    timeout
    4    no responders
    5    forbidden
    6    cannot connect, server error, or the connection was closed
    130  interrupted (Ctrl-C) during a one-shot command

Errors are reported as one line on stderr, ``conat: error: <message> (code <code>)``; ``--debug``
adds the traceback. Commands raise; only :meth:`ConatGroup.invoke` turns exceptions into exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import click

import conat
from conat import (
    ClosedError,
    ConatError,
    ConnectError,
    Forbidden,
    InvalidSubject,
    NoResponders,
    RemoteError,
    ServerError,
    Timeout,
)

__all__ = [
    "EXIT_CONNECT",
    "EXIT_FORBIDDEN",
    "EXIT_INTERRUPTED",
    "EXIT_NO_RESPONDERS",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "ConatGroup",
    "Options",
    "cli",
    "common_options",
    "exit_code_for",
    "json_option",
    "run",
    "stop_on_signals",
    "until_stopped",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK: Final = 0
EXIT_USAGE: Final = 1
EXIT_REMOTE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_NO_RESPONDERS: Final = 4
EXIT_FORBIDDEN: Final = 5
EXIT_CONNECT: Final = 6
EXIT_INTERRUPTED: Final = 130

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(slots=True)
class Options:
    """The global options, shared by every command through ``ctx.obj``."""

    url: str | None = None
    json: bool = False
    debug: bool = False
    credentials: str | None = None
    """Path of a 0600 token file (a bus with auth); never the token itself: argv is not secret."""

    async def connect(self, name: str) -> conat.Client:
        """A client for a command, with the global --url and --credentials."""
        creds = Path(self.credentials) if self.credentials else None
        return await conat.connect(self.url, name=name, credentials=creds)


def exit_code_for(error: BaseException) -> int:
    """The process exit code for an error that ended a command."""
    if isinstance(error, NoResponders):
        return EXIT_NO_RESPONDERS
    if isinstance(error, Timeout):
        return EXIT_TIMEOUT
    if isinstance(error, RemoteError):
        return EXIT_REMOTE
    if isinstance(error, Forbidden):
        return EXIT_FORBIDDEN
    if isinstance(error, ConnectError | ServerError | ClosedError):
        return EXIT_CONNECT
    return EXIT_USAGE  # InvalidSubject, PayloadError, PayloadTooLarge, anything else local


def _describe(error: BaseException) -> str:
    if isinstance(error, ConatError | InvalidSubject):
        return f"{error} (code {error.code})"
    return f"{type(error).__name__}: {error} (use --debug for the traceback)"


def _report(error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"conat: error: {_describe(error)}", file=sys.stderr, flush=True)


class _UsageError(click.UsageError):
    exit_code = EXIT_USAGE


def _usage(error: click.UsageError) -> click.UsageError:
    """The same usage error, exiting with 1 (click's own exit code for it is 2)."""
    return _UsageError(error.format_message(), error.ctx)


PLUGIN_GROUP: Final = "conat.commands"
"""The entry point group of higher layers' commands."""


class ConatGroup(click.Group):
    """A click group with conat's exit codes: usage errors exit 1, library errors map by class.

    Commands of higher layers (``conat run`` from ``actors``, ``conat stream`` from ``persist``)
    arrive through the :data:`PLUGIN_GROUP` entry point group, loaded the first time a command is
    looked up (not at import: a plugin module importing ``conat.cli`` must find it whole).
    """

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            try:
                command = entry.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the CLI
                print(f"conat: warning: command {entry.name!r} failed to load: {e}", file=sys.stderr)
                continue
            if isinstance(command, click.Command):
                self.add_command(command, entry.name)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugins()
        return super().get_command(ctx, cmd_name)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            raise _usage(e) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return list(self.commands)  # the order they were added in: the order a newcomer needs them

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _usage(e) from None
        except (
            click.exceptions.Exit,
            click.ClickException,
            click.Abort,
            BrokenPipeError,
        ):  # click handles them
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:  # noqa: BLE001 - the one place where every error becomes an exit code
            opts = ctx.find_object(Options)
            _report(e, debug=opts is not None and opts.debug)
            raise click.exceptions.Exit(exit_code_for(e)) from None


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (so test runners can swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except (OSError, ValueError):
            self.handleError(record)


_handler: _StderrHandler | None = None


def _configure_logging(level: str) -> None:
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(_handler)
    root.setLevel(level.upper())


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Options).json = True


def _set_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Options).url = value


def json_option(fn: F) -> F:
    """``--json`` on a subcommand too: ``conat req x 1 --json`` works like ``conat --json req x 1``."""
    return click.option(
        "--json", is_flag=True, expose_value=False, callback=_set_json, help="Machine output: JSON lines."
    )(fn)


def common_options(fn: F) -> F:
    """``--json`` and ``--url`` on a subcommand too (as well as on the group)."""
    fn = json_option(fn)
    return click.option(
        "--url",
        metavar="URL",
        expose_value=False,
        callback=_set_url,
        help="Server URL (as the global --url).",
    )(fn)


@click.group(cls=ConatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    metavar="URL",
    help="NATS server URL(s), comma-separated. Default: $CONAT_URL, else the server of a running "
    "`conat up` / `conat server` (found through its state file).",
)
@click.option(
    "--credentials",
    metavar="FILE",
    envvar="CONAT_CREDENTIALS",
    help="A token file (mode 0600) for a bus with auth; also $CONAT_CREDENTIALS. Holds a path, "
    "never the token: command lines and environments are not secret.",
)
@click.option("--json", "json_output", is_flag=True, help="Machine output on stdout as JSON lines.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Level of the log lines written to stderr.",
)
@click.version_option(package_name="conat", prog_name="conat")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str | None,
    credentials: str | None,
    json_output: bool,
    debug: bool,
    log_level: str,
) -> None:
    """conat: a message bus for Python services on NATS.

    Exit codes: 0 ok, 1 usage/local error, 2 remote error, 3 timeout, 4 no responders,
    5 forbidden, 6 cannot connect/server error (credentials refused included), 130 interrupted.
    """
    _configure_logging(log_level)
    ctx.obj = Options(url=url, json=json_output, debug=debug, credentials=credentials)


# -- event loop -------------------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (long-running commands stop cleanly)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            continue
        installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it finishes (its result) or ``stop`` is set (``None``; ``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            if not t.done():
                t.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
        if not task.done():
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()
