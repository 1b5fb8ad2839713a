"""``conat run module:ActorClass ...``: serve actor types from the command line until Ctrl-C/SIGTERM.

Registered with the ``conat`` CLI through the ``conat.commands`` entry point, so ``conat`` itself
never imports the actor layer (imports point downwards). A target is ``module:Class`` or a bare
``module`` (every actor class bound to a subject that the module defines), imported with the current
directory first on the import path (as uvicorn and FastStream do: ``conat run myapp.services:Counter``
works from the project directory). Exit codes: the CLI's table; 7 (``EXIT_GAVE_UP``) when the system
gave up after repeated crashes (an escalation reached the root). A keyed type that another process
already serves on the bus is refused (:class:`OwnedElsewhere`, exit 1): run a keyed type in one
process; unkeyed types scale with ``--queue``.

``--partitions N`` uses N processes (N cores) for the keyed types: it starts N workers, ``conat run
TARGETS --partition I/N`` each (:class:`actors.Workers`, restarted when one exits), and says it is
serving once every partition of every keyed type answers through the bus. Worker ``I`` owns
partition ``I`` of each keyed type (:mod:`actors._partitions`; the bus must split the type's subject
N ways: ``actors.subject_mapping`` gives the mapping, ``ServerConfig(mappings=...)`` takes it). An
unkeyed type with a queue group (its own or ``--queue``) is served by every worker, its calls
shared among them; one without a queue group only by worker 0, so that it still has one server.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Final, NamedTuple

import click

from conat.cli.plugin import EXIT_GAVE_UP, Options, Printer, common_options, run, stop_on_signals

from ._actor import Actor
from ._errors import Escalation
from ._partitions import MAX_PARTITIONS, Partitions
from ._system import ActorSystem
from ._workers import Workers, partition_option, serving_workers, worker_options

__all__ = ["EXIT_ESCALATED", "resolve_targets", "run_actors"]

EXIT_ESCALATED: Final = EXIT_GAVE_UP


def resolve_targets(targets: tuple[str, ...]) -> list[type[Actor]]:
    """The actor classes ``targets`` name; raises ``click.UsageError`` naming a bad target."""
    cwd = os.getcwd()
    if cwd not in sys.path:  # the `conat` script's own directory is sys.path[0], not the project's
        sys.path.insert(0, cwd)
    classes: list[type[Actor]] = []
    for target in targets:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise click.UsageError(f"cannot import {module_name!r} (from {target!r}): {e}") from None
        if attr:
            obj = getattr(module, attr, None)
            if not (inspect.isclass(obj) and issubclass(obj, Actor) and obj.__actor_spec__ is not None):
                raise click.UsageError(f"{target!r} is not an actor class bound to a subject")
            found = [obj]
        else:
            found = [
                obj
                for _, obj in inspect.getmembers(module, inspect.isclass)
                if issubclass(obj, Actor) and obj.__module__ == module.__name__ and obj.__actor_spec__
            ]
            if not found:
                raise click.UsageError(f"module {module_name!r} defines no actor class bound to a subject")
        classes.extend(c for c in found if c not in classes)
    return classes


class _Run(NamedTuple):
    """What one ``conat run`` process serves, and how."""

    targets: tuple[str, ...]
    classes: list[type[Actor]]
    queue: str | None
    stop_timeout: float


@click.command("run", short_help="Serve actor types (module:Class ...) until Ctrl-C.")
@click.argument("targets", nargs=-1, required=True)
@click.option("--queue", help="Queue group for every type (overrides each class's own).")
@click.option(
    "--standby",
    is_flag=True,
    help="For a keyed type another process serves: wait and take over when it stops (or is gone "
    "for the claim's lease), instead of refusing.",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds in-flight work may take to finish on Ctrl-C/SIGTERM.",
)
@click.option(
    "--partitions",
    type=click.IntRange(1, MAX_PARTITIONS),
    default=1,
    show_default=True,
    help="Processes serving the keyed types, each one partition of their keys (one core each). The"
    " bus must split each keyed type's subject as many ways (actors.subject_mapping).",
)
@click.option(
    "--partition",
    metavar="I/N",
    callback=partition_option,
    help="Serve only partition I of N of the keyed types (what each of --partitions N runs).",
)
@common_options
@click.pass_obj
def run_actors(
    opts: Options,
    targets: tuple[str, ...],
    queue: str | None,
    standby: bool,
    stop_timeout: float,
    partitions: int,
    partition: Partitions | None,
) -> None:
    """Serve the actor types TARGETS (module:Class, or module for all of its actors) on the bus.

    Stops gracefully on SIGINT/SIGTERM: intake closes, in-flight calls finish within
    --stop-timeout, then every activation is deactivated.
    """
    if partitions > 1 and partition is not None:
        raise click.UsageError("--partitions starts the partitions itself: give it or --partition, not both")
    job = _Run(targets, resolve_targets(targets), queue, stop_timeout)
    if (partitions > 1 or partition is not None) and not any(cls.spec().keyed for cls in job.classes):
        raise click.UsageError("partitions split keyed types, and none of the targets is keyed")
    try:
        if partitions > 1:
            run(_serve_partitions(opts, job, partitions))
        else:
            run(_serve(opts, job, partition, standby=standby))
    except Escalation as e:
        click.echo(f"conat: error: {e} (code {e.code})", err=True)
        raise click.exceptions.Exit(EXIT_ESCALATED) from None


def _serves_here(cls: type[Actor], queue: str | None, partition: Partitions | None) -> bool:
    """Whether a worker of ``partition`` serves ``cls`` (module docstring: unkeyed types without a
    queue group only in worker 0)."""
    spec = cls.spec()
    if partition is None or spec.keyed or (queue or spec.queue):
        return True
    return partition.owned == (0,)


async def _serve(opts: Options, job: _Run, partition: Partitions | None, *, standby: bool = False) -> None:
    async with await opts.connect("conat-run") as client:
        system = ActorSystem(client, stop_timeout=job.stop_timeout)
        out = Printer(opts.json)
        with stop_on_signals() as stop:
            try:
                for cls in job.classes:
                    if not _serves_here(cls, job.queue, partition):
                        continue
                    parts = partition if cls.spec().keyed else None
                    if standby and cls.spec().keyed:
                        click.echo(f"standing by for {cls.spec().name} on {cls.spec().subject}", err=True)
                    starting = asyncio.ensure_future(
                        system.start(cls, queue=job.queue, partitions=parts, standby=standby)
                    )
                    stopped = asyncio.ensure_future(stop.wait())  # a standby may wait long: Ctrl-C ends it
                    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                    if not starting.done():
                        starting.cancel()
                        await asyncio.gather(starting, return_exceptions=True)
                        break
                    runtime = starting.result()
                    group = f" (queue group {runtime.queue!r})" if runtime.queue else ""
                    part = f" (partition {parts})" if parts is not None else ""
                    text = f"serving {runtime.spec.name} on {runtime.spec.subject}{group}{part}"
                    if opts.json:  # machine output on stdout; people read stderr
                        out.event(text, event="serving", actor=runtime.spec.name, subject=runtime.spec.subject,
                                  queue=runtime.queue, id=system.instance_id,
                                  partition=None if parts is None else parts.owned[0])  # fmt: skip
                    else:
                        click.echo(text, err=True)
            except BaseException:  # e.g. OwnedElsewhere: the types already started stop gracefully
                await system.stop()
                raise
            stopper = asyncio.ensure_future(stop.wait())
            failed = asyncio.ensure_future(system.wait())
            try:
                await asyncio.wait({stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                if not failed.done():
                    await system.stop()
            await failed  # raises the Escalation if the system gave up


def _worker_command(args: list[str]) -> Callable[[int, int], list[str]]:
    def command(index: int, count: int) -> list[str]:
        return [sys.executable, "-m", "conat.cli", "run", *args, "--partition", f"{index}/{count}"]

    return command


async def _serve_partitions(opts: Options, job: _Run, count: int) -> None:
    """Run ``count`` workers (``--partition I/N`` each) until a signal; say so once every partition
    of every keyed type answers through the bus."""
    with stop_on_signals() as stop:
        async with await opts.connect("conat-run-partitions") as client:
            args = [*job.targets, *worker_options(client, opts), "--stop-timeout", str(job.stop_timeout)]
            if job.queue is not None:
                args += ["--queue", job.queue]
            workers = Workers(
                count, _worker_command(args), stop_timeout=job.stop_timeout, what="conat run worker"
            )
            keyed = [cls.spec() for cls in job.classes if cls.spec().keyed]
            async with serving_workers(client, workers, [(spec.subject, spec.subject_for) for spec in keyed]):
                for spec in keyed:
                    text = (
                        f"serving {spec.name} on {spec.subject} in {count} partitions (pids {workers.pids})"
                    )
                    if opts.json:
                        Printer(True).event(text, event="serving", actor=spec.name, subject=spec.subject,
                                            partitions=count, pids=workers.pids)  # fmt: skip
                    else:
                        click.echo(text, err=True)
                await stop.wait()
