"""The public API for commands of higher layers (``conat run``, ``conat stream``, ``conat fs`` …).

conat's command line never imports the packages above it. A package adds commands by naming a click
command or group in the ``conat.commands`` entry point group of its ``pyproject.toml``, and takes part
in ``conat up`` by naming an :class:`UpExtension` instance in the ``conat.up`` group::

    [project.entry-points."conat.commands"]
    fs = "host.fs_cli:fs"

    [project.entry-points."conat.up"]
    host = "host.up:up_extension"

A command uses this module and nothing private of ``conat.cli``:

- Every command under ``conat`` (subcommands of a plugin's group too) gets the global options
  (``--url``, ``--credentials``, ``--json``, ``--debug``, ``--log-level``) it does not define itself, so
  they work before and after the command name; the click context's :class:`Options` holds them and
  connects with ``--url`` and ``--credentials``. :func:`common_options` puts them on a command that
  also runs on its own (``python -m bench``), where no ``conat`` group adds them.
- :func:`read_data` reads a command's DATA argument the way ``conat pub`` does (``-`` or nothing:
  stdin); :func:`data_dir` is conat's data directory, for a command's files (``conat bench`` results).
- :func:`run` runs a coroutine on a fresh event loop (uvloop when installed); long-running commands wrap
  their work in :func:`stop_on_signals` and :func:`until_stopped` so Ctrl-C and SIGTERM stop them cleanly.
- :class:`Printer` writes results (human lines, or JSON lines with ``--json``) to stdout and notes to
  stderr; :func:`to_json` and :func:`format_value` format values the way every command does.
- Commands raise: ``conat``'s group turns any exception into one error line and the exit code of
  :func:`exit_code_for`; a command returns normally for exit code 0. :data:`EXIT_CODES` is the one
  table of exit codes (``conat --help`` and docs/cli.md print it): a plugin uses its ``EXIT_*``
  constants and adds no codes of its own.
"""

from conat._paths import data_dir

from ._app import (
    EXIT_CODES,
    EXIT_CONNECT,
    EXIT_FORBIDDEN,
    EXIT_GAVE_UP,
    EXIT_INTERRUPTED,
    EXIT_NO_RESPONDERS,
    EXIT_NOT_RUNNING,
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
from ._demo import DemoFailed, UpExtension, UpOptions, line
from ._output import Printer, format_value, read_data, to_json

__all__ = [
    "DemoFailed",
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
    "Options",
    "Printer",
    "UpExtension",
    "UpOptions",
    "common_options",
    "data_dir",
    "exit_code_for",
    "format_value",
    "json_option",
    "line",
    "read_data",
    "run",
    "stop_on_signals",
    "to_json",
    "until_stopped",
]
