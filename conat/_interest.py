"""Interest visible cluster-wide: return once every server of the cluster routes to this client.

What holds where
----------------
A subscription is registered with the client's own server when ``subscribe`` returns (conat's
flush is honest, see :mod:`conat._transport`). The server then tells the other servers of its
cluster over its routes (``RS+``), asynchronously: a publish on another node a moment later may
find no interest there and be dropped (a request gets "no responders"). On loopback that
happened to 5 to 15 % of publishes made right after ``subscribe``.

Theory of operation
-------------------
nats-server has no "flush across the cluster" command, but it gives two facts to build one on:

1. A route is one TCP connection, read in order. conat's clusters run with ``pool_size: -1``
   (:class:`~conat.ClusterConfig`): one route per pair of servers carries every account, the
   system account included, instead of a pool of routes each pinned to some accounts.
2. Every account can ask every server of the cluster for its account statistics: the request
   ``$SYS.REQ.ACCOUNT.PING.STATZ`` (imported into every account by nats-server) or, on a bus with
   auth, :data:`PROBE_SUBJECT` (imported by the bus's config from the system account, about an
   empty account, so that it tells nobody anything), answered by each server.

So :func:`confirm_interest` sends one such request after the client's own server has confirmed
everything the client sent before (its flush). The server forwards the request on each route
*behind* the interest changes it already queued there; a server answers only after it has read
them. Once every server of the cluster has answered, every one of them routes to the client's
subscriptions. The servers to wait for are those of the latest INFO (``connect_urls``: nats-server
updates it as servers join and leave); a server that stopped advertising them is waited for until
no answer has come for :data:`IDLE_ANSWER` seconds.

``subscribe(cluster_wide=True)`` waits at most :data:`DEFAULT_INTEREST_TIMEOUT` and keeps the
subscription when some server has not answered by then (a route that is down, or a stalled node
whose route still looks up: services must start); ``flush(cluster_wide=True)`` raises
:class:`~conat.Timeout`.

What it does not cover: interest across leaf-node links (a leaf server is in no cluster; the
system account does not cross the link), and servers whose routes to ours are down (they learn
every subscription when the route comes back). On a server that is in no cluster it returns after
the local flush.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import msgspec

from subjects import INTEREST_PROBE

from ._backoff import Backoff, retry
from ._errors import Forbidden, Timeout

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "DEFAULT_INTEREST_TIMEOUT",
    "wait_for_servers",
    "PROBE_ACCOUNT",
    "PROBE_SUBJECT",
    "SYSTEM_PROBE_SUBJECT",
    "confirm_interest",
    "probe_blocks",
]

PROBE_SUBJECT: Final = INTEREST_PROBE
"""The probe on a bus with accounts (conat's buses with auth): every server answers it, and every
grant may publish it (:data:`subjects.INTEREST_PROBE`)."""
SYSTEM_PROBE_SUBJECT: Final = "$SYS.REQ.ACCOUNT.PING.STATZ"
"""The probe nats-server offers every account (clients of a server without accounts use it)."""
PROBE_ACCOUNT: Final = "PROBE"
"""An account with no users: what :data:`PROBE_SUBJECT` asks about, so its answers tell nothing."""
DEFAULT_INTEREST_TIMEOUT: Final = 5.0
IDLE_ANSWER: Final = 0.25
_BODY: Final = b'{"include_unused":true}'


class _Server(msgspec.Struct):
    id: str = ""
    name: str = ""


class _Answer(msgspec.Struct):
    server: _Server = msgspec.field(default_factory=_Server)


_answer: Final = msgspec.json.Decoder(_Answer)


def probe_blocks(accounts: tuple[str, ...], system_account: str) -> dict[str, Any]:
    """nats-server config blocks (accounts mode) that let clients of ``accounts`` use
    :data:`PROBE_SUBJECT`: the empty :data:`PROBE_ACCOUNT`, the system account's export of its
    statistics request, and one import per account (merged into the server config)."""
    statz = f"$SYS.REQ.ACCOUNT.{PROBE_ACCOUNT}.STATZ"
    blocks: dict[str, Any] = {
        PROBE_ACCOUNT: {},
        system_account: {"exports": [{"service": statz, "response_type": "stream"}]},
    }
    for account in accounts:
        blocks[account] = {
            "imports": [{"service": {"account": system_account, "subject": statz}, "to": PROBE_SUBJECT}]
        }
    return {"accounts": blocks}


def probe_subject(client: Client) -> str:
    """The probe this client asks with: :data:`PROBE_SUBJECT` with a grant (a bus with auth), the
    system's otherwise.

    Raises:
        Forbidden: the client's grant does not allow the probe.
    """
    permissions = client.permissions
    if permissions is None:
        return SYSTEM_PROBE_SUBJECT
    if not permissions.can_publish(PROBE_SUBJECT):
        raise Forbidden(PROBE_SUBJECT, "publish", "cluster-wide interest cannot be confirmed")
    return PROBE_SUBJECT


async def confirm_interest(
    client: Client, timeout: float = DEFAULT_INTEREST_TIMEOUT, *, flushed: bool = False
) -> tuple[str, ...]:
    """Return once every server of the client's cluster routes to the subscriptions this client
    made before the call (module docstring); returns the names of the servers that confirmed.

    ``flushed``: the client's own server has just confirmed everything (``subscribe`` did): on a
    server in no cluster nothing more is sent.

    Raises:
        Timeout: some server of the cluster did not confirm within ``timeout`` seconds (its route
            to ours may be down); the subscriptions stay, live where they are known.
        Forbidden: the client's grant does not allow the probe (:func:`probe_subject`).
        NoResponders: the bus does not answer the probe (a bus with accounts that conat did not
            configure).
        ClosedError, Disconnected: the client closed, or its link dropped meanwhile.
    """
    core = client._core
    loop = asyncio.get_running_loop()
    started = loop.time()
    transport = core.transport
    if transport.cluster is None:
        if not flushed:
            await client.flush(timeout)
        return (transport.server_name or "",)
    subject = probe_subject(client)
    expected = len(client.cluster_urls) or None
    remaining = max(timeout - (loop.time() - started), 0.001)
    servers: dict[str, str] = {}
    replies = client.request_many(
        subject,
        _BODY,
        encoding="raw",
        timeout=remaining,
        idle_timeout=None if expected else IDLE_ANSWER,
        max_buffer=max(expected or 0, 64),
    )
    try:
        async for msg in replies:
            try:
                server = _answer.decode(msg.raw).server
            except msgspec.DecodeError:
                continue
            servers[server.id] = server.name
            if expected is not None and len(servers) >= expected:
                break
    finally:
        await replies.aclose()
    if expected is not None and len(servers) < expected:
        raise Timeout(
            subject, loop.time() - started, f"cluster-wide interest ({len(servers)}/{expected} servers)"
        )
    return tuple(sorted(servers.values()))


_MESH_BACKOFF: Final = Backoff(initial=0.02, maximum=0.2)


async def wait_for_servers(client: Client, count: int, timeout: float) -> tuple[str, ...]:
    """Wait until at least ``count`` servers of the client's cluster answer its probe (a mesh
    forming: a node just started learns its peers over its routes); returns their names.

    Raises:
        Timeout: fewer answered within ``timeout`` seconds.
        Forbidden, NoResponders, ClosedError: as :func:`confirm_interest`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def enough() -> tuple[str, ...]:
        servers = await confirm_interest(client, max(deadline - loop.time(), 0.01))
        if len(servers) < count:
            raise Timeout(PROBE_SUBJECT, timeout, f"a mesh of {count} servers ({len(servers)} answered)")
        return servers

    return await retry(
        enough, backoff=_MESH_BACKOFF, retry_if=lambda e: isinstance(e, Timeout), deadline=deadline
    )
