"""Subject mappings on a bus with the auth callout. nats-server applies the mapping before it checks
a publisher's permissions (measured here: an account publishing ``persist.project-P.kv``, which its
grant allows, is checked on ``$CONAT.part.2.<i>.persist.project-P.kv``), so every grant allows the
partitioned twin of what it allows (``subjects.partitioned_pattern``), and neither the mapping nor
the partition subjects reach a subject the publisher may not publish to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors import partition_of, partition_subject, subject_mapping
from conat import Forbidden
from conat._server_config import ServerConfig
from conat.auth import AuthBus
from subjects import Scope

from .conftest import BUS, A, H, Mint, P, Q, connect_as

pytestmark = pytest.mark.anyio

COUNT = 2
PATTERN = "persist.*.>"


@pytest.fixture(scope="module")
async def bus(mint: Mint, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthBus]:
    """The host bus, splitting ``persist.*.>`` two ways (as ``conat persist serve --workers 2``
    needs it)."""
    directory: Path = tmp_path_factory.mktemp("mapped-host-bus")
    config = ServerConfig(mappings=dict([subject_mapping(PATTERN, COUNT)]))
    async with await AuthBus.start(
        bus=BUS, public_keys=mint.keyring.public_keys(), directory=directory, config=config
    ) as b:
        yield b


async def _until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_permissions_are_checked_on_the_published_subject(bus: AuthBus, mint: Mint) -> None:
    # the owner of every partition: the host (unrestricted on its own bus) subscribes to the
    # partition subjects, as persist workers do
    owner = await connect_as(bus, mint.token(f"host-{H}"))
    collaborator = await connect_as(bus, mint.token(f"account-{A}", Scope(projects=(P,))))
    try:
        seen: list[str] = []
        for index in range(COUNT):
            await owner.subscribe(partition_subject(PATTERN, COUNT, index), dispatch=lambda m: seen.append(m.subject))
        await owner.subscribe("public.sentinel", dispatch=lambda m: seen.append(m.subject))
        await owner.flush()
        mine, theirs = f"persist.project-{P}.kv", f"persist.project-{Q}.kv"
        assert collaborator.permissions is not None
        assert collaborator.permissions.can_publish(mine) and not collaborator.permissions.can_publish(theirs)
        internal = partition_subject(f"project-{Q}.kv", COUNT, partition_of(f"project-{Q}", COUNT))
        internal = internal.replace(f".project-{Q}.kv", f".persist.project-{Q}.kv")  # its mapped subject

        # 1. the publish it may make reaches its partition's owner, although the mapped subject
        # ($CONAT.part.2.<i>.persist...) is in no grant of the collaborator: checked before mapping
        await collaborator.publish(mine, "allowed")
        expected = partition_subject(f"persist.project-{P}.kv", COUNT, partition_of(f"project-{P}", COUNT))
        await _until(lambda: expected in seen)

        # 2. the client's own check refuses both the other project's subject and its mapped form
        for subject in (theirs, internal):
            with pytest.raises(Forbidden):
                await collaborator.publish(subject, "local")

        # 3. nats-server refuses them too (the local check off): neither the mapping nor the
        # internal subject carries the publish to the owner
        collaborator.permissions = None
        seen.clear()
        await collaborator.publish(theirs, "through the mapping")
        await collaborator.publish(internal, "straight to the partition")
        await collaborator.publish("public.sentinel", "end")  # one publisher's messages stay in order
        await _until(lambda: "public.sentinel" in seen)
        assert seen == ["public.sentinel"]
        with pytest.raises(Forbidden):
            await collaborator.request(internal, None, timeout=5)
        # and it may not subscribe to the partition subjects to read others' requests
        with pytest.raises(Forbidden):
            await collaborator.subscribe(partition_subject(PATTERN, COUNT, 0))
    finally:
        await collaborator.aclose()
        await owner.aclose()
