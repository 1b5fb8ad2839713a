"""Types of the file server's client, checked by mypy and run by pytest: ``host.fs`` is typed with
the file server's own protocol, plus streams and watches."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import assert_type

import pytest

import conat
from conat import NatsServer
from host import (
    DirListing,
    FileServer,
    FileServerConfig,
    FsClient,
    FsWatch,
    Stat,
    WatchEvent,
    WriteResult,
    fs,
)

pytestmark = pytest.mark.anyio


async def test_fs_client_is_typed(nats_server: NatsServer, tmp_path: Path) -> None:
    async with await conat.connect(nats_server.url) as client:
        config = FileServerConfig(projects=str(tmp_path / "[project_id]"))
        async with FileServer(client, config) as server:
            project = str(uuid.uuid4())
            await server.create_project(project)
            f = fs(client, project)
            assert_type(f, FsClient)
            written = await f.write_file("a", b"x")
            assert_type(written, WriteResult)
            st = await f.stat("a")
            assert_type(st, Stat)
            listing = await f.readdir("")
            assert_type(listing, DirListing)
            assert [e.name for e in listing.entries] == ["a"] and st.size == 1
            streamed = await f.write_stream("b", [b"y"])
            assert_type(streamed, WriteResult)
            watch = await f.watch("")
            assert_type(watch, FsWatch)
            async with watch:
                event = await watch.next(timeout=10)
                assert_type(event, WatchEvent)
                assert event.type == "ready"
