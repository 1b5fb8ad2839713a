"""Differential tests against a real nats-server: our matching and permissions vs. what it delivers.

1. Delivery matrix: ~100 patterns are subscribed at once, ~100 subjects published, and every
   (pattern, subject) pair the server delivered is compared with :func:`subjects.matches` and with a
   :class:`subjects.SubjectIndex` holding the same patterns.
2. Permissions: a private nats-server whose users carry :meth:`Permissions.to_nats` lists. Each
   user publishes every subject of a small exhaustive alphabet, and subscribes every pattern; what
   the server lets through is compared with ``can_publish`` / ``can_subscribe``.

Barriers, not sleeps: nats-server handles one connection's commands in order and answers a PING
after everything it received before it, so once a PONG is back every earlier PUB/SUB took effect
and the resulting MSGs precede that PONG. See :func:`_settle` for the one catch in nats-py.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from subjects import Permissions, SubjectIndex, matches

pytestmark = pytest.mark.anyio

NATS_SERVER = Path(sys.executable).parent / "nats-server"


async def _ignore_errors(error: Exception) -> None:
    """Permission violations are expected here; keep nats-py from logging each one."""


async def _connect(url: str, **kwargs: Any) -> Any:
    return await nats.connect(url, allow_reconnect=False, error_cb=_ignore_errors, **kwargs)


async def _settle(nc: Any) -> None:
    """Return once the server has processed every command ``nc`` sent before.

    nats-py 2.16's ``flush()`` alone is not enough: ``_send_ping`` writes the PING straight to the
    transport, ahead of PUB/SUB commands still waiting in the client's pending buffer, so the PONG
    can come back before they were even sent (measured: ~1 in 10 subscriptions missed a message
    published right after ``subscribe(); flush()``). The first flush kicks the flusher task, which
    writes the pending buffer before the PONG can be read; the second PING then follows it.
    """
    await nc.flush()
    await nc.flush()


async def _drain_pending(sub: Any) -> list[str]:
    """Every message already queued on a callback-less subscription, without waiting for more."""
    return [(await sub.next_msg(timeout=1)).subject for _ in range(sub.pending_msgs)]


# --- 1. delivery matrix on the shared server -----------------------------------------------------


def _random_matrix(seed: int, count: int) -> tuple[list[str], list[str]]:
    """Distinct patterns and subjects over a small alphabet (plus a rarer token), so many pairs match."""
    rng = random.Random(seed)
    literal_tokens = ["a", "b", "c", "long-token_1"]
    weights = [5, 5, 5, 1]
    pattern_set: set[str] = set()
    while len(pattern_set) < count:
        depth = rng.randint(1, 4)
        tokens = [rng.choice(["*", *rng.choices(literal_tokens, weights)]) for _ in range(depth)]
        if rng.random() < 0.3:
            tokens[-1] = ">"
        pattern_set.add(".".join(tokens))
    subject_set: set[str] = set()
    while len(subject_set) < count:
        depth = rng.randint(1, 5)
        subject_set.add(".".join(rng.choices(literal_tokens, weights, k=depth)))
    return sorted(pattern_set), sorted(subject_set)


async def test_delivery_matrix_agrees_with_matches_and_index(nats_server: Any) -> None:
    patterns, subjects = _random_matrix(seed=20240611, count=100)
    prefix = f"difftest-{uuid.uuid4().hex[:12]}"  # private to this run of this test
    subscriber = await _connect(nats_server.url)
    try:
        publisher = await _connect(nats_server.url)
        try:
            subs = {p: await subscriber.subscribe(f"{prefix}.{p}") for p in patterns}
            done = await subscriber.subscribe(f"{prefix}-done")
            await _settle(subscriber)
            for subject in subjects:
                await publisher.publish(f"{prefix}.{subject}", b"")
            await publisher.publish(f"{prefix}-done", b"")  # delivered after every message above
            await done.next_msg(timeout=10)
            delivered = {
                p: sorted(s[len(prefix) + 1 :] for s in await _drain_pending(sub)) for p, sub in subs.items()
            }
        finally:
            await publisher.close()
    finally:
        await subscriber.close()

    expected = {p: sorted(s for s in subjects if matches(p, s)) for p in patterns}
    assert delivered == expected
    assert sum(map(len, expected.values())) > 300  # the matrix is not trivially empty

    index: SubjectIndex[str] = SubjectIndex()
    for pattern in patterns:
        index.add(pattern, pattern)
    for subject in subjects:
        assert sorted(index.match(subject)) == sorted(p for p in patterns if subject in delivered[p])


# --- 2. permissions on a private server ----------------------------------------------------------

ALPHABET = ["a", "b", "c", "z"]  # z = "any other token": with patterns of <= 2 tokens this is exhaustive
ALL_SUBJECTS = [".".join(t) for n in (1, 2, 3) for t in itertools.product(ALPHABET, repeat=n)]
ALL_PATTERNS = sorted(
    {
        ".".join(t)
        for n in (1, 2)
        for t in itertools.product(["a", "b", "c", "*", ">"], repeat=n)
        if ">" not in t[:-1]
    }
)

FIXED_PERMISSIONS = [
    Permissions(),  # nothing: emitted as deny ">"
    Permissions.allow_all(),
    Permissions(publish_allow=("a.>",), publish_deny=("a.b",), subscribe_allow=("a.*", "b")),
    Permissions(publish_allow=None, publish_deny=("b.>", "c"), subscribe_allow=None, subscribe_deny=("a.b",)),
    Permissions(publish_allow=("*.a",), subscribe_allow=("a.*", "a.*.>", "*.b"), subscribe_deny=("a.c",)),
    Permissions(publish_allow=(), subscribe_allow=("a.>",)),
]


def _random_permissions(seed: int, count: int) -> list[Permissions]:
    rng = random.Random(seed)

    def pattern_list() -> tuple[str, ...]:
        return tuple(rng.sample(ALL_PATTERNS, rng.randint(0, 3)))

    def allow() -> tuple[str, ...] | None:
        return None if rng.random() < 0.2 else pattern_list()

    return [
        Permissions(
            publish_allow=allow(),
            publish_deny=pattern_list(),
            subscribe_allow=allow(),
            subscribe_deny=pattern_list(),
        )
        for _ in range(count)
    ]


PERMISSIONS = FIXED_PERMISSIONS + _random_permissions(seed=7, count=10)


@dataclass(frozen=True)
class PrivateServer:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def permission_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """A nats-server with one user per entry of PERMISSIONS (``u<i>``) and an unrestricted ``admin``."""
    directory = tmp_path_factory.mktemp("nats-permissions")
    log = directory / "nats.log"
    users: list[dict[str, Any]] = [{"user": "admin", "password": "admin"}]
    for i, perms in enumerate(PERMISSIONS):
        nats_perms = perms.to_nats()
        users.append(
            {
                "user": f"u{i}",
                "password": "pw",
                "permissions": {"publish": nats_perms["pub"], "subscribe": nats_perms["sub"]},
            }
        )
    config = directory / "nats.conf"
    # nats-server's config parser accepts JSON.
    config.write_text(
        json.dumps({"host": "127.0.0.1", "port": -1, "log_file": str(log), "authorization": {"users": users}})
    )
    process = subprocess.Popen(
        [str(NATS_SERVER), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = _wait_for_listener(process, log)
        yield PrivateServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_listener(process: subprocess.Popen[bytes], log: Path) -> str:
    marker = "Listening for client connections on "
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"nats-server exited with {process.returncode}: {log.read_text() if log.exists() else ''}"
            )
        if log.exists():
            for line in log.read_text().splitlines():
                if marker in line:
                    return "nats://" + line.split(marker, 1)[1].strip()
        time.sleep(0.02)
    raise RuntimeError("nats-server did not start listening in time")


@pytest.mark.parametrize("user", range(len(PERMISSIONS)))
async def test_server_enforces_to_nats_like_can_publish(permission_server: PrivateServer, user: int) -> None:
    perms = PERMISSIONS[user]
    admin = await _connect(permission_server.url, user="admin", password="admin")
    try:
        client = await _connect(permission_server.url, user=f"u{user}", password="pw")
        try:
            spy = await admin.subscribe(">")
            await _settle(admin)
            for subject in ALL_SUBJECTS:
                await client.publish(subject, b"")
            await _settle(client)
            await _settle(admin)
            received = sorted(await _drain_pending(spy))
        finally:
            await client.close()
    finally:
        await admin.close()
    assert received == sorted(s for s in ALL_SUBJECTS if perms.can_publish(s))


async def _deliveries(server: PrivateServer, user: int, patterns: list[str]) -> dict[str, list[str]]:
    """User ``u<user>`` subscribes ``patterns``; admin publishes ALL_SUBJECTS; what arrived where."""
    admin = await _connect(server.url, user="admin", password="admin")
    try:
        client = await _connect(server.url, user=f"u{user}", password="pw")
        try:
            subs = {p: await client.subscribe(p) for p in patterns}
            await _settle(client)
            for subject in ALL_SUBJECTS:
                await admin.publish(subject, b"")
            await _settle(admin)
            await _settle(client)
            return {p: sorted(await _drain_pending(sub)) for p, sub in subs.items()}
        finally:
            await client.close()
    finally:
        await admin.close()


@pytest.mark.parametrize("user", range(len(PERMISSIONS)))
async def test_what_can_subscribe_allows_the_server_delivers_in_full(
    permission_server: PrivateServer, user: int
) -> None:
    """Soundness of can_subscribe against the real enforcement of to_nats().

    The converse does not hold, by design: nats-server admits some subscriptions conat refuses,
    filtering denied messages at delivery (and see the next test).
    """
    perms = PERMISSIONS[user]
    allowed = [p for p in ALL_PATTERNS if perms.can_subscribe(p)]
    delivered = await _deliveries(permission_server, user, allowed)
    for pattern in allowed:
        assert delivered[pattern] == sorted(s for s in ALL_SUBJECTS if matches(pattern, s)), pattern


async def test_nats_server_lets_full_wildcard_through_a_trailing_star_allow(
    permission_server: PrivateServer,
) -> None:
    """Characterizes nats-server 2.15: why conat checks subscriptions itself, and a policy caveat.

    The server admits a subscription when its pattern, read as a literal subject, matches an allow
    pattern, and does not re-check allow lists at delivery. With subscribe allow ``a.*`` the
    pattern ``a.>`` is admitted (its ``>`` token "matches" the ``*``) and receives ``a.x.y``, which
    no allow pattern covers. If this starts failing, the server became stricter: update the note
    in subjects/_permissions.py.
    """
    user = 2
    perms = PERMISSIONS[user]
    assert perms.subscribe_allow == ("a.*", "b") and perms.subscribe_deny == ()
    assert not perms.can_subscribe("a.>")
    delivered = await _deliveries(permission_server, user, ["a.>"])
    assert "a.b.c" in delivered["a.>"]
    assert not perms.can_subscribe("a.b.c")
