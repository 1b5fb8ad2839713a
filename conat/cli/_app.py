"""The ``conat`` click group: global options, exit codes, error reporting, and the event loop.

Exit codes: one table, :data:`EXIT_CODES`, for every command (plugins' included). ``conat --help``
prints it and docs/cli.md shows the same table (a test holds them together); :func:`exit_code_for`
maps an error to its code.

Global options (``--url``, ``--credentials``, ``--json``, ``--debug``, ``--log-level``) work before
the command and after it (``conat --json req x 1`` = ``conat req x 1 --json``): :class:`ConatGroup`
gives every command it holds, plugins' and subgroups' included, the ones it lacks.

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
    BadURL,
    ClosedError,
    ConatError,
    ConnectError,
    Forbidden,
    InvalidSubject,
    NoResponders,
    RemoteError,
    ServerError,
    Timeout,
    Unauthorized,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_CONNECT",
    "EXIT_FORBIDDEN",
    "EXIT_GAVE_UP",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_RUNNING",
    "EXIT_NO_RESPONDERS",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "GLOBAL_OPTIONS",
    "STOP_SIGNALS",
    "ConatGroup",
    "Options",
    "add_global_options",
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
EXIT_GAVE_UP: Final = 7
EXIT_NOT_RUNNING: Final = 8
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final[tuple[tuple[int, str], ...]] = (
    (EXIT_OK, "ok; also: Ctrl-C, SIGTERM or SIGHUP stopping sub, reply, server, up, run..."),
    (EXIT_USAGE, "usage error, bad input (option, URL, subject, payload), not found, other local error"),
    (EXIT_REMOTE, "remote error: the handler (or the persist service) replied with an error"),
    (EXIT_TIMEOUT, "timeout"),
    (EXIT_NO_RESPONDERS, "no responders: nobody serves the subject"),
    (EXIT_FORBIDDEN, "forbidden: the credentials do not allow the subject"),
    (EXIT_CONNECT, "cannot connect (credentials refused too), server error, connection closed"),
    (EXIT_GAVE_UP, "a service gave up after repeated crashes (e.g. conat run)"),
    (EXIT_NOT_RUNNING, "no bus is running (conat status, conat down)"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C during a one-shot command"),
)
"""Every exit code of ``conat`` and what it means, in order: the one table (``--help``, docs/cli.md)."""

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a long-running command cleanly (exit 0). SIGHUP: the terminal was closed."""

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
    """The process exit code for an error that ended a command (:data:`EXIT_CODES`)."""
    if isinstance(error, BadURL):  # a ConnectError, but the user's typo: nothing was tried
        return EXIT_USAGE
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
    if isinstance(error, Unauthorized):  # which refusal, and for a bus with auth, how to get in
        hint = "; pass --credentials FILE (a token file, see `conat auth token`)"
        return f"{error}{hint if error.refusal == 'no-credentials' else ''} (code {error.code}: {error.refusal})"
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


def _show_help(error: click.exceptions.NoArgsIsHelpError) -> click.exceptions.Exit:
    """A bare group (``conat``, ``conat stream``): its help on stdout, exit 0. Asking what there is
    is not an error, and click's own way (help as an error message on stderr) reads like one."""
    click.echo(error.ctx.get_help(), color=error.ctx.color)
    return click.exceptions.Exit(EXIT_OK)


PLUGIN_GROUP: Final = "conat.commands"
"""The entry point group of higher layers' commands."""


# -- global options -----------------------------------------------------------------------------


def _setter(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback storing an option's value in the :class:`Options` of the invocation (if given)."""

    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            setattr(ctx.ensure_object(Options), field, value)

    return store


def _set_log_level(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _configure_logging(value)


def _global_option_specs(*, on_group: bool) -> list[tuple[str, dict[str, Any]]]:
    """The global options, for the group (defaults, ``$CONAT_CREDENTIALS``) or for a command.

    On a command an option only overrides what the group set: no defaults, no environment.
    """
    url_help = (
        "NATS server URL(s), comma-separated. Default: $CONAT_URL, else the server of a running "
        "`conat up` / `conat server` (found through its state file)."
    )
    credentials_help = (
        "A token file (mode 0600) for a bus with auth; also $CONAT_CREDENTIALS. Holds a path, never the "
        "token: command lines and environments are not secret."
    )
    url = {"metavar": "URL", "help": url_help if on_group else "Server URL(s)."}
    credentials = {
        "metavar": "FILE",
        "envvar": "CONAT_CREDENTIALS" if on_group else None,
        "help": credentials_help if on_group else "A token file for a bus with auth.",
    }
    log_level = {
        "type": click.Choice(LOG_LEVELS, case_sensitive=False),
        "default": "WARNING" if on_group else None,
        "show_default": on_group,
        "callback": _set_log_level,
        "help": "Level of the log lines written to stderr.",
    }
    return [
        ("--url", {"callback": _setter("url"), **url}),
        ("--credentials", {"callback": _setter("credentials"), **credentials}),
        (
            "--json",
            {"is_flag": True, "callback": _setter("json"), "help": "Machine output as JSON lines."},
        ),
        (
            "--debug",
            {"is_flag": True, "callback": _setter("debug"), "help": "Show tracebacks on errors."},
        ),
        ("--log-level", log_level),
    ]


def _global_options(*, on_group: bool) -> list[click.Option]:
    return [
        click.Option([name], expose_value=False, **attrs)
        for name, attrs in _global_option_specs(on_group=on_group)
    ]


GLOBAL_OPTIONS: Final = tuple(option.opts[0] for option in _global_options(on_group=True))
"""The options that work before and after the command."""


def _has_option(command: click.Command, name: str) -> bool:
    return any(name in param.opts for param in command.params)


def add_global_options(command: click.Command) -> None:
    """Give ``command`` (and, for a group, every command in it) each global option it lacks."""
    for option in _global_options(on_group=False):
        if not _has_option(command, option.opts[0]):
            command.params.append(option)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub)


class ConatGroup(click.Group):
    """A click group with conat's exit codes: usage errors exit 1, library errors map by class.

    Commands of higher layers (``conat run`` from ``actors``, ``conat stream`` from ``persist``)
    arrive through the :data:`PLUGIN_GROUP` entry point group, loaded the first time a command is
    looked up (not at import: a plugin module importing ``conat.cli`` must find it whole). Every
    command added gets the global options it lacks (:func:`add_global_options`).
    """

    _plugins_tried: frozenset[str] = frozenset()

    def _load_plugins(self, name: str | None = None) -> None:
        """Load the plugin command ``name`` (every plugin command if ``None``), once each.

        One command's run imports only its own plugin: ``conat pub`` never imports persist.
        """
        for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            if entry.name in self._plugins_tried or (name is not None and entry.name != name):
                continue
            self._plugins_tried |= {entry.name}
            try:
                command = entry.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break the CLI
                print(f"conat: warning: command {entry.name!r} failed to load: {e}", file=sys.stderr)
                continue
            if isinstance(command, click.Command):
                self.add_command(command, entry.name)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        add_global_options(cmd)
        super().add_command(cmd, name)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self._load_plugins(cmd_name)
        return super().get_command(ctx, cmd_name)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            raise _show_help(e) from None
        except click.UsageError as e:
            raise _usage(e) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return list(self.commands)  # the order they were added in: the order a newcomer needs them

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare subgroup: `conat stream`
            raise _show_help(e) from None
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


def _decorate(fn: F, names: tuple[str, ...]) -> F:
    for name, attrs in reversed(_global_option_specs(on_group=False)):
        if name in names:
            fn = click.option(name, expose_value=False, **attrs)(fn)
    return fn


def json_option(fn: F) -> F:
    """``--json`` on a command run on its own (under ``conat``, every command has every global option)."""
    return _decorate(fn, ("--json",))


def common_options(fn: F) -> F:
    """Every global option on a command run on its own (``python -m bench``), with the same meaning.

    Under ``conat`` this changes nothing: the group gives each command the global options anyway.
    """
    return _decorate(fn, GLOBAL_OPTIONS)


def _exit_code_lines() -> str:
    """The exit code table as help text (``\\b``: click keeps the lines as they are)."""
    return "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)


@click.group(
    cls=ConatGroup,
    params=_global_options(on_group=True),
    epilog=_exit_code_lines(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="conat", prog_name="conat")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """conat: a message bus for Python services on NATS.

    Global options work before the command and after it: `conat --json req x 1` is `conat req x 1
    --json`. Run `conat up` to start a local bus and see it work.
    """
    ctx.ensure_object(Options)


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
    """An event set by SIGINT, SIGTERM or SIGHUP while the block runs (long-running commands stop cleanly)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
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
