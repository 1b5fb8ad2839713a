"""The public API for commands of higher layers (``conat run``, ``conat stream``, ``conat fs`` …).

conat's command line never imports the packages above it. A package adds commands by naming a click
command or group in the ``conat.commands`` entry point group of its ``pyproject.toml``, and takes part
in ``conat up`` by naming an :class:`UpExtension` instance in the ``conat.up`` group::

    [project.entry-points."conat.commands"]
    fs = "host.fs_cli:fs"

    [project.entry-points."conat.up"]
    host = "host.up:up_extension"

A command uses this module and nothing private of ``conat.cli``:

- :func:`common_options` gives a subcommand the global ``--url`` and ``--json`` (they also work before
  the subcommand); the click context's :class:`Options` holds them and connects with ``--url`` and
  ``--credentials``.
- :func:`run` runs a coroutine on a fresh event loop (uvloop when installed); long-running commands wrap
  their work in :func:`stop_on_signals` and :func:`until_stopped` so Ctrl-C and SIGTERM stop them cleanly.
- :class:`Printer` writes results (human lines, or JSON lines with ``--json``) to stdout and notes to
  stderr; :func:`to_json` and :func:`format_value` format values the way every command does.
- Commands raise: ``conat``'s group turns any exception into one error line and the exit code of
  :func:`exit_code_for` (the ``EXIT_*`` table); a command returns normally for exit code 0.
"""

from ._app import (
    EXIT_CONNECT,
    EXIT_FORBIDDEN,
    EXIT_INTERRUPTED,
    EXIT_NO_RESPONDERS,
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Options,
    common_options,
    exit_code_for,
    json_option,
    run,
    stop_on_signals,
    until_stopped,
)
from ._demo import DemoFailed, UpExtension, line
from ._output import Printer, format_value, to_json

__all__ = [
    "DemoFailed",
    "EXIT_CONNECT",
    "EXIT_FORBIDDEN",
    "EXIT_INTERRUPTED",
    "EXIT_NO_RESPONDERS",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Options",
    "Printer",
    "UpExtension",
    "common_options",
    "exit_code_for",
    "format_value",
    "json_option",
    "line",
    "run",
    "stop_on_signals",
    "to_json",
    "until_stopped",
]
