"""Partitioned persist workers: N processes, each serving one partition of the scopes.

One persist process is one Python interpreter, so it uses one core. ``conat persist serve --workers
N`` (and ``conat up --workers N``) start N worker processes instead, ``conat persist serve
--partition i/N`` each: the bus splits ``persist.*.>`` among them by scope (a subject mapping,
:func:`persist.persist_mappings`; :mod:`actors._partitions` says how), so a scope, and every
stream file in it, has exactly one worker; worker 0 also takes the bootlogs and sends each on to its
scope's worker. Each worker locks its own partition of the storage roots
(:mod:`persist._rootlock`).

The processes are kept running by :class:`actors.Workers` (one home for every partitioned service:
``conat run --partitions N`` uses it too): a worker that exits is started again after a backoff, its
partition answering 503 meanwhile; a stop sends each SIGTERM and waits.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import final

from actors import Workers as _Workers

__all__ = ["Workers", "worker_command"]


def worker_command(index: int, count: int, args: Sequence[str]) -> list[str]:
    """The command of worker ``index`` of ``count``: ``conat persist serve --partition i/N`` with
    ``args`` (the connection and file options the parent was given)."""
    return [
        sys.executable,
        "-m",
        "conat.cli",
        "persist",
        "serve",
        "--partition",
        f"{index}/{count}",
        *args,
    ]


@final
class Workers(_Workers):
    """``count`` persist workers (:func:`worker_command` with ``args``), kept running until
    :meth:`stop`; ``quiet`` sends their output lines to /dev/null (their errors still go to stderr)."""

    def __init__(self, count: int, args: Sequence[str], *, stop_timeout: float, quiet: bool = False) -> None:
        argv = list(args)
        super().__init__(
            count,
            lambda index, n: worker_command(index, n, argv),
            stop_timeout=stop_timeout,
            quiet=quiet,
            what="persist worker",
        )
