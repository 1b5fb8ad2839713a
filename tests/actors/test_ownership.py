"""One owner per keyed actor type on a bus: a second process refuses, two that start at the same
moment end with one owner, and the settling rule itself on random schedules."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conat
from actors import (
    Actor,
    ActorSystem,
    BrokenInvariant,
    OwnedElsewhere,
    OwnerNotice,
    RestartPolicy,
    actor_proxy,
)
from actors._ownership import Verdict, claim_subject, judge
from conat._server import NatsServer
from conat.testing import FakeClock
from subjects import Permissions

from .conftest import eventually
from .sample_actors import Greeter

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


# -- the settling rule, pure ------------------------------------------------------------------
def _owner(i: int, since: float) -> OwnerNotice:
    return OwnerNotice("owner", "s.*", "S", f"i{i}", since)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_schedule_of_announcements_leaves_exactly_the_earliest_owner(data: st.DataObject) -> None:
    """Owners subscribe, then announce; every notice reaches whoever was subscribed when it was
    published, in any order and at any later time. Once everything is delivered, exactly one
    owner is left, and it is the earliest (by ``since``, then instance)."""
    n = data.draw(st.integers(2, 5), label="owners")
    sinces = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="since")
    me = [_owner(i, float(s)) for i, s in enumerate(sinces)]
    # each owner's two steps (subscribe, then announce), interleaved with the others' at random
    order: list[tuple[int, str]] = []
    pending = {i: ["sub", "announce"] for i in range(n)}
    while any(pending.values()):
        i = data.draw(st.sampled_from(sorted(k for k, v in pending.items() if v)))
        order.append((i, pending[i].pop(0)))
    subscribed: set[int] = set()
    alive = set(range(n))
    inflight: list[tuple[int, OwnerNotice]] = []  # (recipient, notice)

    def publish(sender: int) -> None:
        inflight.extend((j, me[sender]) for j in subscribed)

    def deliver(k: int) -> None:
        recipient, notice = inflight.pop(k)
        if recipient not in alive:
            return
        verdict = judge(me[recipient], notice)
        if verdict is Verdict.YIELD:
            alive.discard(recipient)
        elif verdict is Verdict.ANNOUNCE:
            publish(recipient)

    for i, step in order:
        while inflight and data.draw(st.booleans(), label="deliver now"):
            deliver(data.draw(st.integers(0, len(inflight) - 1)))
        if step == "sub":
            subscribed.add(i)
        else:
            publish(i)
    while inflight:
        deliver(data.draw(st.integers(0, len(inflight) - 1)))
    earliest = min(range(n), key=lambda i: (me[i].since, me[i].instance))
    assert alive == {earliest}


def test_judge_answers_probes_and_ignores_itself_and_other_subjects() -> None:
    me = _owner(1, 10.0)
    assert judge(me, me) is Verdict.IGNORE
    assert judge(me, OwnerNotice("probe", "s.*", "S", "x")) is Verdict.ANSWER
    assert judge(me, OwnerNotice("owner", "other.*", "S", "x", 1.0)) is Verdict.IGNORE
    assert judge(me, _owner(2, 9.0)) is Verdict.YIELD
    assert judge(me, _owner(2, 11.0)) is Verdict.ANNOUNCE
    assert judge(me, _owner(0, 10.0)) is Verdict.YIELD  # a tie goes by instance


# -- on a real bus ------------------------------------------------------------------------------
class Keyed(Actor, subject="owned.*"):
    async def who(self) -> str:
        return self.client.name or ""


class SameSubject(Actor, subject="owned.*", name="SameSubjectOtherName"):
    async def who(self) -> str:
        return "other"


class Unkeyed(Actor, subject="owned-unkeyed", queue="many"):
    async def who(self) -> str:
        return self.client.name or ""


async def test_a_second_owner_is_refused_and_may_start_once_the_first_stops(nats_server: NatsServer) -> None:
    async with (
        await conat.connect(nats_server.url, name="first") as one,
        await conat.connect(nats_server.url, name="second") as two,
    ):
        first = ActorSystem(one)
        await first.start(Keyed)
        second = ActorSystem(two)
        with pytest.raises(OwnedElsewhere) as e:
            await second.start(Keyed)
        error = e.value
        assert (error.code, error.actor, error.subject, error.running) == (
            "owned-elsewhere",
            "Keyed",
            "owned.*",
            False,
        )
        assert error.owner["pid"] == os.getpid() and error.owner["client"] == "first"
        assert "one owner per bus" in str(error) and "to scale" in str(error)
        with pytest.raises(OwnedElsewhere):  # a type of another name on the same subject, too
            await second.start(SameSubject)
        # unkeyed types are not claimed: both processes serve them (here with a queue group)
        await first.start(Unkeyed)
        await second.start(Unkeyed)
        assert await actor_proxy(two, Keyed, "k").who() == "first"
        await first.stop()
        await second.start(Keyed)
        assert await actor_proxy(one, Keyed, "k").who() == "second"
        await second.stop()


async def test_two_starting_at_the_same_moment_end_with_one_owner(nats_server: NatsServer) -> None:
    for _ in range(3):
        async with (
            await conat.connect(nats_server.url, name="a") as a,
            await conat.connect(nats_server.url, name="b") as b,
        ):
            systems = [ActorSystem(a), ActorSystem(b)]
            results = await asyncio.gather(*(s.start(Keyed) for s in systems), return_exceptions=True)
            started = [s for s, r in zip(systems, results, strict=True) if not isinstance(r, BaseException)]
            assert len(started) == 1, results
            assert sum(isinstance(r, OwnedElsewhere) for r in results) == 1
            owner = started[0].client.name
            answers = {await actor_proxy(a, Keyed, f"k{i}").who() for i in range(10)}
            assert answers == {owner}  # nobody else serves any key
            for s in systems:
                await s.stop()


async def test_an_owner_that_meets_an_earlier_owner_yields_and_stops(nats_server: NatsServer) -> None:
    async with (
        await conat.connect(nats_server.url, name="server") as server,
        await conat.connect(nats_server.url) as other,
    ):
        system = ActorSystem(server)
        await system.start(Keyed)
        claims = await other.subscribe(claim_subject("owned.*"))
        # a later owner (a process that missed us) is told that we came first
        later = OwnerNotice("owner", "owned.*", "Keyed", "later", time.time() + 60)
        await other.publish(claim_subject("owned.*"), later, encoding="json")
        notice = (await claims.next(timeout=5)).decode(OwnerNotice)
        assert notice.instance == "later"  # our own publish comes back first
        notice = (await claims.next(timeout=5)).decode(OwnerNotice)
        assert (notice.kind, notice.name, notice.client) == ("owner", "Keyed", "server")  # announced again
        assert system.failure is None
        # an earlier owner wins: this system stops serving the type and stops
        earlier = OwnerNotice("owner", "owned.*", "Keyed", "earlier", 1.0, 4321, "elsewhere", "old")
        await other.publish(claim_subject("owned.*"), earlier, encoding="json")
        with pytest.raises(OwnedElsewhere) as e:
            await asyncio.wait_for(system.wait(), 10)
        assert e.value.running and e.value.owner["pid"] == 4321
        assert "stops serving" in str(e.value)
        with pytest.raises(conat.NoResponders):
            await actor_proxy(other, Keyed, "k").who()


async def test_a_probe_is_answered_by_the_owner_and_garbage_is_ignored(nats_server: NatsServer) -> None:
    async with (
        await conat.connect(nats_server.url, name="server") as server,
        await conat.connect(nats_server.url) as other,
        ActorSystem(server) as system,
    ):
        await system.start(Keyed)
        for junk in (b"not json", b'{"kind": "owner"}', b"x" * 10_000):
            await other.publish(claim_subject("owned.*"), junk, encoding="raw")
        probe = OwnerNotice("probe", "owned.*", "Keyed", "someone")
        reply = await other.request(claim_subject("owned.*"), probe, encoding="json")
        notice = reply.decode(OwnerNotice)
        assert (notice.kind, notice.client, notice.pid) == ("owner", "server", os.getpid())
        assert system.failure is None


async def test_the_claim_is_held_while_the_type_restarts(nats_server: NatsServer) -> None:
    class Crashy(
        Actor,
        subject="owned-crashy.*",
        policy=RestartPolicy(max_restarts=0, within=60.0, backoff_min=0.0, backoff_max=0.0),
    ):
        async def crash(self) -> None:
            raise BrokenInvariant("boom")

    async with await conat.connect(nats_server.url) as one, await conat.connect(nats_server.url) as two:
        clock = FakeClock()
        async with ActorSystem(one, clock=clock) as first:
            runtime = await first.start(Crashy)
            with pytest.raises(conat.RemoteError):
                await actor_proxy(two, Crashy, "k").crash()
            await eventually(lambda: not runtime.accepting, "aborted, waiting to restart")
            with pytest.raises(OwnedElsewhere):  # nobody takes the type over meanwhile
                await ActorSystem(two).start(Crashy)


async def test_a_connection_without_the_claim_grant_starts_unchecked(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    grant = Permissions(publish_allow=None, subscribe_allow=None, publish_deny=("$CONAT.>",))
    async with await conat.connect(nats_server.url, permissions=grant) as client:
        with caplog.at_level(logging.WARNING, logger="conat.actors"):
            async with ActorSystem(client) as system:
                await system.start(Keyed)
                assert await actor_proxy(client, Keyed, "k").who() == ""
        assert "cannot be detected" in caplog.text


# -- two real processes ------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def _conat_run(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conat.cli", "run", "tests.actors.sample_actors:Greeter", "--url", url, *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip


async def _serving(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert line.decode().startswith("serving Greeter"), line


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize("queue", [[], ["--queue", "greeters"]])
async def test_conat_run_twice_the_second_refuses_and_says_how_to_scale(
    nats_server: NatsServer, queue: list[str]
) -> None:
    first = await _conat_run(nats_server.url, *queue)
    second: asyncio.subprocess.Process | None = None
    try:
        await _serving(first)
        second = await _conat_run(nats_server.url, *queue)
        assert second.stderr is not None
        err = (await asyncio.wait_for(second.stderr.read(), 30)).decode()
        assert await second.wait() == 1
        assert "keyed actor Greeter (greeter.*) is already served by process" in err
        assert "one owner per bus" in err and "(code owned-elsewhere)" in err
        async with await conat.connect(nats_server.url) as client:
            assert await actor_proxy(client, Greeter, "k").greet("x") == "hello x, from k"
        assert await _stop(first) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_conat_run_twice_at_the_same_moment_leaves_one_serving(nats_server: NatsServer) -> None:
    procs = await asyncio.gather(*(_conat_run(nats_server.url, "--queue", "g") for _ in range(2)))
    try:
        done, _ = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=30,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        assert done, "neither process gave way"
        loser = next(p for p in procs if p.returncode is not None)
        winner = next(p for p in procs if p is not loser)
        assert loser.returncode == 1
        assert loser.stderr is not None
        assert "(code owned-elsewhere)" in (await loser.stderr.read()).decode()
        await asyncio.sleep(0.5)
        assert winner.returncode is None
        async with await conat.connect(nats_server.url) as client:
            assert await actor_proxy(client, Greeter, "k").greet("y") == "hello y, from k"
        assert await _stop(winner) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_two_processes_claiming_at_the_same_instant_end_with_one_owner(nats_server: NatsServer) -> None:
    for _ in range(2):
        start_at = time.time() + 2.5  # both are connected and waiting by then
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.actors.claim_race",
                nats_server.url,
                str(start_at),
                "1.0",
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                env=_env(),
            )
            for _ in range(2)
        ]
        outputs = await asyncio.gather(*(asyncio.wait_for(p.communicate(), 30) for p in procs))
        lines = [[json.loads(x) for x in out.decode().splitlines()] for out, _ in outputs]
        assert all(p.returncode == 0 for p in procs), lines
        owners = [ls for ls in lines if ls[-1].get("final") == "owner"]
        assert len(owners) == 1, lines
        others = [ls for ls in lines if ls is not owners[0]]
        assert others[0][-1] in (
            {"started": False, "code": "owned-elsewhere", "running": False},
            {"final": "lost"},
        )
