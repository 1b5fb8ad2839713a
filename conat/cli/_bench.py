"""``conat bench``: a thin door to the ``bench`` package (imported only when this command runs)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import click

__all__ = ["bench"]


def _bench_main() -> Callable[[list[str]], Any]:
    for module in ("bench", "bench._harness", "bench.__main__"):
        try:
            fn = getattr(importlib.import_module(module), "main", None)
        except ImportError:
            continue
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    raise click.UsageError("the bench package has no main(argv) entry point in this installation")


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
    short_help="Benchmark conat against raw nats-py (see conat bench --help).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmark the bus (all arguments go to the bench harness; try: conat bench --help)."""
    code = _bench_main()(list(args))
    raise click.exceptions.Exit(code if isinstance(code, int) else 0)
