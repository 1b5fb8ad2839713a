"""The ``conat`` command line: ``conat up``, ``server``, ``status``, ``down``, ``pub``, ``sub``, ``req``,
``reply``, ``auth``, and plugin commands such as ``run`` (from ``actors``) and ``bench`` (from ``bench``).

``main`` is the console-script entry point; ``cli`` is the click group (for ``CliRunner``).
"""

import io
import sys

from ._app import cli as cli
from ._auth_cmds import auth_group
from ._bus import pub, reply, req, sub
from ._lifecycle import down, status
from ._server_cmds import server, up

__all__ = ["cli", "main"]

for _command in (up, server, status, down, pub, sub, req, reply, auth_group):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and exit with its exit code."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # never die on a character the terminal cannot show
            stream.reconfigure(errors="backslashreplace")
    cli.main(argv, prog_name="conat")
