"""Who may do what on a real host, enforced by nats-server (``subjects.grant``): each call is tried
with the client's own check (``Forbidden`` at once) and with it switched off, against the server.

- the runner (``runner.host-<h>``) is master's (hub) alone;
- collaborators of p reach ``project.<p>.>`` (status, exec), p's bootlog and persist scope, and
  nothing of another project;
- a project process reaches only its own subjects.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

import conat
from host import exec_command, runner_proxy
from persist import AKV, bootlog
from subjects import Scope, project_subject, runner_host

from .conftest import Host

pytestmark = pytest.mark.anyio

STATUS = {"name": "project.status", "args": [], "kwargs": {}}


@pytest.fixture(scope="module")
async def two(host: Host) -> AsyncIterator[tuple[str, str]]:
    p, q = await host.new_project(), await host.new_project()
    yield p, q
    for project in (p, q):
        await host.runner.stop(project, wait=30)


async def _both_ways(client: conat.Client, call: object) -> None:
    """``call(client)`` is refused by the client's own check and, with that off, by the server."""
    with pytest.raises(conat.Forbidden):
        await call(client)  # type: ignore[operator]
    saved, client.permissions = client.permissions, None
    try:
        with pytest.raises(conat.Forbidden):
            await call(client)  # type: ignore[operator]
    finally:
        client.permissions = saved


async def _no_exec(host: Host, client: conat.Client, project: str) -> None:
    """An exec socket into ``project`` fails and runs nothing. (conat sockets do not check the
    grant locally yet: the refused connect surfaces as a timeout, not ``Forbidden``.)"""
    marker = f"/tmp/conat-forbidden-{uuid.uuid4().hex}"
    home = host.server.config.projects / project
    with pytest.raises((conat.Forbidden, conat.Timeout)):
        await exec_command(client, project, ["touch", marker, "escaped"], connect_timeout=3)
    assert not (home / "escaped").exists()


async def test_only_master_calls_the_runner(host: Host, two: tuple[str, str]) -> None:
    p, _ = two
    listed = await host.runner.list()
    assert p in {s.project_id for s in listed}
    for principal, scope in (
        (f"account-{uuid.uuid4()}", Scope(projects=(p,))),
        (f"project-{p}", Scope()),
        (f"account-{uuid.uuid4()}", Scope(hosts=(host.host_id,))),
    ):
        client = await host.connect(principal, scope)
        try:
            await _both_ways(client, lambda c: runner_proxy(c, host.host_id, timeout=5).list())
            await _both_ways(
                client,
                lambda c: c.request(runner_host(host.host_id) + "." + p, {"name": "status"}, timeout=5),
            )
        finally:
            await client.aclose()


async def test_collaborators_reach_their_project_and_nothing_else(host: Host, two: tuple[str, str]) -> None:
    p, q = two
    collaborator = await host.connect(f"account-{uuid.uuid4()}", Scope(projects=(p,)))
    try:
        reply = await collaborator.request(project_subject(p, "status"), STATUS, timeout=10)
        assert reply.data["project_id"] == p
        result = await exec_command(collaborator, p, ["echo", "hello"])
        assert result.stdout == b"hello\n"
        phases = [e.phase async for e in bootlog.events(collaborator, project_id=p, follow=False)]
        assert "ready" in phases
        await AKV(collaborator, f"project-{p}", "notes").set("k", "v")
        stored = host.server.config.projects / p / ".local/share/conat/persist/notes.db"
        assert stored.is_file()  # a project's stores live in its own home
        await _both_ways(collaborator, lambda c: c.request(project_subject(q, "status"), STATUS, timeout=5))
        await _no_exec(host, collaborator, q)
        await _both_ways(collaborator, lambda c: anext(bootlog.events(c, project_id=q, follow=False)))
        await _both_ways(collaborator, lambda c: AKV(c, f"project-{q}", "notes", timeout=5).get("k"))
    finally:
        await collaborator.aclose()


async def test_a_project_reaches_only_its_own_subjects(host: Host, two: tuple[str, str]) -> None:
    p, q = two
    project = await host.connect(f"project-{p}")
    try:
        reply = await project.request(project_subject(p, "status"), STATUS, timeout=10)
        assert reply.data["project_id"] == p
        await _both_ways(project, lambda c: c.request(project_subject(q, "status"), STATUS, timeout=5))
        await _no_exec(host, project, q)
        await _both_ways(project, lambda c: c.request(runner_host(host.host_id), {"name": "list"}, timeout=5))
    finally:
        await project.aclose()
