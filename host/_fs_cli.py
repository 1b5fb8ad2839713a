"""``conat fs``: a project's files from a shell, and the file server itself.

Registered through the ``conat.commands`` entry point group (conat never imports host). PROJECT is a
project uuid; paths are relative to the project's root.

- ``conat fs ls PROJECT [PATH] [-l] [-R]``: names (``-l``: type, size, mtime; ``-R``: the tree).
- ``conat fs cat PROJECT PATH``: the file's bytes to stdout (streamed: any size).
- ``conat fs put PROJECT PATH [FILE]``: FILE (or stdin) becomes PATH, atomically (streamed).
- ``conat fs rm PROJECT PATH... [-r] [-f]``.
- ``conat fs watch PROJECT [PATH] [--count N]``: one line per event until Ctrl-C.
- ``conat fs snapshot create|list|restore|delete PROJECT ...``.
- ``conat fs serve --projects '/data/projects/[project_id]' [--quota BYTES] [--backend plain|btrfs]``.

Exit codes are the CLI's: a refusal by the file server (``ENOENT``, ``OUTSIDE_ROOT``...) is a remote
error, exit 2, with the code in the error line.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from conat import Client
from conat.cli.plugin import Options, Printer, common_options, run, stop_on_signals, until_stopped

from ._fs_client import FsClient, fs
from ._fs_config import FileServerConfig
from ._fs_server import FileServer

__all__ = ["fs_group"]


def _project(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a project uuid") from None


_project_arg = click.argument("project", callback=_project)


async def _with_fs(opts: Options, project: str, body: Any) -> Any:
    async with await opts.connect("conat-cli-fs") as client:
        return await body(fs(client, project))


@click.group("fs", short_help="A project's files (the file server).")
def fs_group() -> None:
    """Read and change a project's files through its file server, or run one."""


@fs_group.command("ls")
@_project_arg
@click.argument("path", default="")
@click.option("-l", "long", is_flag=True, help="Type, size and mtime of each name.")
@click.option("-R", "recursive", is_flag=True, help="The whole tree below PATH.")
@common_options
@click.pass_obj
def ls(opts: Options, project: str, path: str, long: bool, recursive: bool) -> None:
    """List a directory of PROJECT."""
    out = Printer(opts.json)

    async def body(f: FsClient) -> None:
        if long and not recursive:
            for e in (await f.listing(path)).entries:
                out.event(f"{e.type:8} {e.size:>12} {e.mtime:>18.3f} {e.name}", **_fields(e))
            return
        for d in (await f.readdir(path, recursive=recursive)).entries:
            out.event(d.name + ("/" if d.type == "dir" else ""), name=d.name, type=d.type)

    run(_with_fs(opts, project, body))


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__struct_fields__}


@fs_group.command("cat")
@_project_arg
@click.argument("path")
@common_options
@click.pass_obj
def cat(opts: Options, project: str, path: str) -> None:
    """Write a file of PROJECT to stdout (streamed)."""

    async def body(f: FsClient) -> None:
        async for chunk in f.read_stream(path):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    run(_with_fs(opts, project, body))


@fs_group.command("put")
@_project_arg
@click.argument("path")
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@common_options
@click.pass_obj
def put(opts: Options, project: str, path: str, source: Path | None) -> None:
    """Replace PATH of PROJECT with SOURCE (default: stdin), atomically."""
    out = Printer(opts.json)

    async def stdin() -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(sys.stdin.buffer.read, 1 << 20):
            yield chunk

    async def body(f: FsClient) -> None:
        result = await (f.upload(source, path) if source is not None else f.write_stream(path, stdin()))
        out.event(
            f"wrote {result.size} bytes to {path} (sha256 {result.sha256})", path=path, **_fields(result)
        )

    run(_with_fs(opts, project, body))


@fs_group.command("rm")
@_project_arg
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "recursive", is_flag=True, help="Remove directories and their contents.")
@click.option("-f", "force", is_flag=True, help="A missing path is no error.")
@common_options
@click.pass_obj
def rm(opts: Options, project: str, paths: tuple[str, ...], recursive: bool, force: bool) -> None:
    """Remove PATHS of PROJECT."""
    run(_with_fs(opts, project, lambda f: f.rm(list(paths), recursive=recursive, force=force)))


@fs_group.command("watch")
@_project_arg
@click.argument("path", default="")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events (not counting ready).")
@common_options
@click.pass_obj
def watch(opts: Options, project: str, path: str, count: int | None) -> None:
    """Print PROJECT's file events under PATH (add, change, unlink, addDir, unlinkDir, overflow)."""
    out = Printer(opts.json)

    async def body(f: FsClient) -> None:
        seen = 0
        async with await f.watch(path) as events:
            async for event in events:
                out.event(f"{event.type} {event.path}", type=event.type, path=event.path)
                if event.type != "ready":
                    seen += 1
                if count is not None and seen >= count:
                    return

    async def main() -> None:
        with stop_on_signals() as stop:
            await until_stopped(stop, _with_fs(opts, project, body))

    try:
        run(main())
    except KeyboardInterrupt:
        pass


@fs_group.group("snapshot")
def snapshot() -> None:
    """A project's snapshots."""


@snapshot.command("create")
@_project_arg
@click.argument("name", required=False)
@common_options
@click.pass_obj
def snapshot_create(opts: Options, project: str, name: str | None) -> None:
    out = Printer(opts.json)

    async def body(f: FsClient) -> None:
        made = await f.create_snapshot(name)
        out.event(f"snapshot {made.name}", **_fields(made))

    run(_with_fs(opts, project, body))


@snapshot.command("list")
@_project_arg
@common_options
@click.pass_obj
def snapshot_list(opts: Options, project: str) -> None:
    out = Printer(opts.json)

    async def body(f: FsClient) -> None:
        for s in await f.list_snapshots():
            out.event(f"{s.name}", **_fields(s))

    run(_with_fs(opts, project, body))


@snapshot.command("restore")
@_project_arg
@click.argument("name")
@click.argument("path", required=False)
@common_options
@click.pass_obj
def snapshot_restore(opts: Options, project: str, name: str, path: str | None) -> None:
    """Restore PATH (default: the whole project) from snapshot NAME."""
    run(_with_fs(opts, project, lambda f: f.restore_snapshot(name, path)))


@snapshot.command("delete")
@_project_arg
@click.argument("name")
@common_options
@click.pass_obj
def snapshot_delete(opts: Options, project: str, name: str) -> None:
    run(_with_fs(opts, project, lambda f: f.delete_snapshot(name)))


@fs_group.command("serve")
@click.option("--projects", required=True, help="A project's root, with [project_id] for its uuid.")
@click.option("--snapshots", help="Where snapshots go, with [project_id] (default: beside the projects).")
@click.option("--backend", type=click.Choice(["plain", "btrfs"]), default="plain", show_default=True)
@click.option("--quota", type=click.IntRange(min=0), help="Bytes per project.")
@click.option("--audit", type=click.Path(dir_okay=False), help="SQLite file of the audit log.")
@common_options
@click.pass_obj
def serve(
    opts: Options, projects: str, snapshots: str | None, backend: str, quota: int | None, audit: str | None
) -> None:
    """Serve fs.*, its transfer and watch sockets until Ctrl-C or SIGTERM (one per host bus)."""
    try:
        config = FileServerConfig(
            projects=projects,
            snapshots=snapshots,
            backend="btrfs" if backend == "btrfs" else "plain",
            quota=quota,
            audit=audit,
        )
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    out = Printer(opts.json)

    async def main() -> None:
        with stop_on_signals() as stop:
            async with await opts.connect("conat-fs") as client:
                await _serve(client, config, out, stop)

    try:
        run(main())
    except KeyboardInterrupt:
        pass
    out.event("file server stopped", event="stopped")


async def _serve(client: Client, config: FileServerConfig, out: Printer, stop: asyncio.Event) -> None:
    async with FileServer(client, config):
        out.event(
            f"file server ready on fs.* (projects {config.projects})\nPress Ctrl-C to stop.",
            event="ready",
            projects=config.projects,
            url=client.connected_url,
        )
        await stop.wait()
