"""Bootlogs over a real nats-server and persist service: publish, history, live follow, bounds."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import conat
from conat import RemoteError
from persist import (
    BOOTLOG_CONFIG,
    AStream,
    BadRequest,
    BootlogEvent,
    PersistServer,
    bootlog,
)
from subjects import bootlog_project, project_scope

pytestmark = pytest.mark.anyio


async def test_history_then_live_events(server: PersistServer, client: conat.Client) -> None:
    project = str(uuid.uuid4())
    await bootlog.publish(client, project_id=project, phase="create", message="creating", progress=10)
    await bootlog.publish(client, project_id=project, phase="mount", progress=50)
    seen: list[BootlogEvent] = []

    async def follow() -> None:
        async for event in bootlog.events(client, project_id=project):
            seen.append(event)
            if event.phase == "ready":
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await bootlog.publish(client, project_id=project, phase="ready", progress=100)
    await asyncio.wait_for(task, 10)
    assert [(e.phase, e.progress, e.seq) for e in seen] == [
        ("create", 10, 1),
        ("mount", 50, 2),
        ("ready", 100, 3),
    ]
    assert seen[0].message == "creating" and seen[0].time > 0
    # the bootlog is the stream "bootlog" of the project's scope, kept an hour
    file = server.placement.path(f"projects/{project}/bootlog")
    assert file.is_file()
    stream = AStream(client, project_scope(project), "bootlog")
    assert (await stream.config()) == BOOTLOG_CONFIG


async def test_follow_only_new_and_host_bootlogs(server: PersistServer, client: conat.Client) -> None:
    host = str(uuid.uuid4())
    await bootlog.publish(client, host_id=host, phase="old")
    only_new = bootlog.events(client, host_id=host, history=False)
    first = asyncio.ensure_future(anext(only_new))
    await asyncio.sleep(0.05)
    await bootlog.publish(client, host_id=host, phase="new", error="disk full")
    event = await asyncio.wait_for(first, 10)
    assert (event.phase, event.error) == ("new", "disk full")
    await only_new.aclose()
    history = [e.phase async for e in bootlog.events(client, host_id=host, follow=False)]
    assert history == ["old", "new"]


async def test_bad_bootlog_input(server: PersistServer, client: conat.Client) -> None:
    with pytest.raises(BadRequest):
        await bootlog.publish(client, phase="x")
    with pytest.raises(BadRequest):
        await bootlog.publish(client, project_id=str(uuid.uuid4()), host_id=str(uuid.uuid4()), phase="x")
    with pytest.raises(BadRequest):
        await bootlog.publish(client, project_id=str(uuid.uuid4()), phase="")
    with pytest.raises(BadRequest):
        await bootlog.publish(client, project_id=str(uuid.uuid4()), phase="x", progress=101)
    # the bootlog subject serves only its own stream: no other stream, no deletes
    project = str(uuid.uuid4())
    other = AStream(client, project_scope(project), "secrets", subject=bootlog_project(project))
    with pytest.raises(BadRequest):
        await other.publish(1)
    log = AStream(client, project_scope(project), "bootlog", subject=bootlog_project(project))
    with pytest.raises(BadRequest):
        await log.delete(up_to=10)
    with pytest.raises(RemoteError):
        await client.request(bootlog_project(project), b"junk", encoding="raw")
