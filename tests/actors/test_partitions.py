"""Partitioned ownership of a keyed type (actors/_partitions.py) on a real nats-server that maps the
type's subject into partitions: each key is served by its partition's one owner, a partition
without an owner answers 503 until one returns, and a start the bus does not match is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conat
from actors import (
    Actor,
    ActorSystem,
    OwnedElsewhere,
    Partitions,
    PartitionsUnmapped,
    partition_of,
    subject_mapping,
)
from actors._partitions import probe_key, unmapped_subject
from conat import NoResponders
from conat._server import NatsServer
from conat._server_config import ServerConfig, config_tree

pytestmark = pytest.mark.anyio

COUNT = 2


class Counter(Actor, subject="ptest.*"):
    """Counts per key, and says which process (system) served it."""

    def __init__(self) -> None:
        self.n = 0

    async def bump(self) -> list[object]:
        self.n += 1
        return [self.key, self.n, self.runtime_owner]

    @property
    def runtime_owner(self) -> str:
        return _OWNERS.get(id(self.client), "?")


_OWNERS: dict[int, str] = {}


class Tailed(Actor, subject="ptail.*.>"):
    async def receive(self, msg: conat.Message) -> object:
        return msg.subject


@pytest.fixture(scope="module")
def mapped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    mappings = dict([subject_mapping("ptest.*", COUNT), subject_mapping("ptail.*.>", COUNT)])
    server = NatsServer(
        ServerConfig(server_name="conat-test-partitions", mappings=mappings),
        directory=tmp_path_factory.mktemp("nats-partitions"),
    )
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture
async def caller(mapped_server: NatsServer) -> AsyncIterator[conat.Client]:
    async with await conat.connect(mapped_server.url, name="caller") as c:
        yield c


async def _owner(url: str, name: str, *indexes: int) -> tuple[conat.Client, ActorSystem]:
    client = await conat.connect(url, name=name)
    _OWNERS[id(client)] = name
    system = ActorSystem(client, stop_timeout=2.0)
    await system.start(Counter, partitions=Partitions(COUNT, indexes))
    return client, system


async def _close(client: conat.Client, system: ActorSystem) -> None:
    await system.stop()
    await client.aclose()


def test_the_mapping_is_nats_servers_syntax() -> None:
    source, dest = subject_mapping("persist.*.>", 4)
    assert (source, dest) == ("persist.*.>", "$CONAT.part.4.{{partition(4,1)}}.persist.{{wildcard(1)}}.>")
    tree = config_tree(ServerConfig(mappings={source: dest}))
    assert tree["mappings"] == {source: dest}
    with_auth = config_tree(
        ServerConfig(
            mappings={source: dest},
            extra_blocks={"accounts": {"APP": {}, "SYS": {}}, "system_account": "SYS"},
        )
    )
    assert with_auth["accounts"]["APP"]["mappings"] == {source: dest}  # where clients are
    assert "mappings" not in with_auth["accounts"]["SYS"] and "mappings" not in with_auth
    assert unmapped_subject("$CONAT.part.4.3.persist.hub.api") == "persist.hub.api"
    with pytest.raises(ValueError):
        Partitions(2, (2,))
    with pytest.raises(ValueError):
        Partitions(2, (0, 0))


@given(st.integers(1, 64), st.integers(0, 63))
def test_probe_keys_land_in_their_partition(count: int, index: int) -> None:
    index %= count
    assert partition_of(probe_key(index, count), count) == index
    assert partition_of(probe_key(index, count, 3), count) == index


async def test_each_key_is_served_by_its_partitions_one_owner(
    mapped_server: NatsServer, caller: conat.Client
) -> None:
    a = await _owner(mapped_server.url, "owner-a", 0)
    b = await _owner(mapped_server.url, "owner-b", 1)
    try:
        keys = [f"k{i}" for i in range(12)]
        assert {partition_of(k, COUNT) for k in keys} == {0, 1}
        for key in keys:
            got = (await caller.request(f"ptest.{key}", {"name": "bump"})).data
            assert got == [key, 1, "owner-a" if partition_of(key, COUNT) == 0 else "owner-b"]
        # a second owner of a partition is refused, and serves nothing
        client = await conat.connect(mapped_server.url, name="owner-c")
        try:
            with pytest.raises(OwnedElsewhere):
                await ActorSystem(client, stop_timeout=1.0).start(Counter, partitions=Partitions(COUNT, (0,)))
        finally:
            await client.aclose()
        # partition 0's owner dies: its keys answer 503 (nobody subscribes), the others go on
        await _close(*a)
        k0 = next(k for k in keys if partition_of(k, COUNT) == 0)
        k1 = next(k for k in keys if partition_of(k, COUNT) == 1)
        with pytest.raises(NoResponders) as gone:
            await caller.request(f"ptest.{k0}", {"name": "bump"}, timeout=1.0)
        assert gone.value.code == 503
        assert (await caller.request(f"ptest.{k1}", {"name": "bump"})).data == [k1, 2, "owner-b"]
        # an owner returns (one process may own several partitions' worth: here just 0 again)
        a = await _owner(mapped_server.url, "owner-a2", 0)
        assert (await caller.request(f"ptest.{k0}", {"name": "bump", "args": []})).data[2] == "owner-a2"
    finally:
        await _close(*a)
        await _close(*b)


async def test_a_key_sent_to_another_partition_is_refused(
    mapped_server: NatsServer, caller: conat.Client
) -> None:
    """Straight to a partition subject (not through the mapping): the owner serves only its keys."""
    a = await _owner(mapped_server.url, "owner-a", 0, 1)
    try:
        key = next(k for k in (f"w{i}" for i in range(20)) if partition_of(k, COUNT) == 1)
        with pytest.raises(conat.RemoteError) as wrong:
            await caller.request(f"$CONAT.part.{COUNT}.0.ptest.{key}", {"name": "bump"}, timeout=5)
        assert wrong.value.code == 400 and "not of partition 0 of 2" in str(wrong.value)
        assert (await caller.request(f"$CONAT.part.{COUNT}.1.ptest.{key}", {"name": "bump"})).data == [key, 1, "owner-a"]
    finally:
        await _close(*a)


async def test_actors_see_the_subject_as_published(mapped_server: NatsServer, caller: conat.Client) -> None:
    async with (
        await conat.connect(mapped_server.url) as client,
        ActorSystem(client, stop_timeout=1.0) as system,
    ):
        await system.start(Tailed, partitions=Partitions(COUNT, (0, 1)))
        assert (await caller.request("ptail.x.a.b", b"")).data == "ptail.x.a.b"


async def test_a_start_the_bus_does_not_split_is_refused(
    mapped_server: NatsServer, nats_server: NatsServer, tmp_path: Path
) -> None:
    # the session's bus has no mapping: nobody would ever send to the partition
    async with await conat.connect(nats_server.url) as client:
        system = ActorSystem(client, stop_timeout=1.0)
        with pytest.raises(PartitionsUnmapped) as unmapped:
            await system.start(Counter, partitions=Partitions(COUNT, (0,)))
        assert unmapped.value.code == "partitions-unmapped" and "nobody answered" in str(unmapped.value)
        await system.stop()
    # the bus splits 2 ways, the process was told 3: the probe reaches no partition of 3
    async with await conat.connect(mapped_server.url) as client:
        system = ActorSystem(client, stop_timeout=1.0)
        with pytest.raises(PartitionsUnmapped):
            await system.start(Counter, partitions=Partitions(3, (1,)))
        await system.stop()
