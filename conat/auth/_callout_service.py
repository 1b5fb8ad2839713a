"""The auth callout as a service: nats-server's authorization requests in, the :class:`Decider`'s
answers out.

A plain conat service, not an actor: a subscription to :data:`~conat.auth.AUTH_CALLOUT_SUBJECT` in
the :data:`CALLOUT_QUEUE` queue group (every responder of a bus shares the load, each request goes
to one) and a :class:`~conat.MicroService` that shows it in ``$SRV``. So the bus's security needs
nothing above conat (the decision itself: :mod:`conat.auth._callout`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Final, Self, final

from conat import Client, ConatError, Message, MicroService, Subscription

from ._callout import Decider
from ._nats_claims import AUTH_CALLOUT_SUBJECT, XKEY_HEADER

__all__ = [
    "CALLOUT_MAX_BUFFER",
    "CALLOUT_QUEUE",
    "CALLOUT_SERVICE",
    "STORE_METADATA",
    "AuthCallout",
    "CalloutStatistics",
]

log = logging.getLogger("conat.auth.callout_service")

CALLOUT_SERVICE: Final = "AuthCallout"
"""The callout's name in ``$SRV`` discovery."""
CALLOUT_ENDPOINT: Final = "authorize"
CALLOUT_QUEUE: Final = "conat-auth"
"""The queue group every responder of a bus answers the callout in."""
CALLOUT_MAX_BUFFER: Final = 10_000
"""Authorization requests that may wait for one responder; beyond that they are refused at once."""
CALLOUT_STOP_TIMEOUT: Final = 5.0
STORE_METADATA: Final = "conat.auth.store"
"""The ``$SRV`` metadata key naming the auth store a responder decides with (its id)."""


@final
@dataclass(frozen=True, slots=True)
class CalloutStatistics:
    """What one :class:`AuthCallout` did since it started.

    Attributes:
        answered: requests answered (granted + refused + ignored + failed).
        granted: connections granted.
        refused: connections refused with a reason (in the audit log).
        ignored: requests that were not ours to answer (no xkey seal, undecryptable, not signed by
            a server): answered empty, which nats-server takes as a refusal.
        failed: requests whose decision raised (logged, answered empty: fail closed).
        dropped: requests that arrived while :data:`CALLOUT_MAX_BUFFER` were waiting (answered
            with a 429 error, which nats-server takes as a refusal).
        buffered: requests waiting now.
        connections: this responder's kick list (:class:`Connections`).
    """

    answered: int
    granted: int
    refused: int
    ignored: int
    failed: int
    dropped: int
    buffered: int
    connections: int


@final
class AuthCallout:
    """The callout service of one responder: answers nats-server's authorization requests on
    :data:`~conat.auth.AUTH_CALLOUT_SUBJECT` with its :class:`Decider`. Start with :meth:`start`,
    stop with :meth:`aclose`.

    A plain conat service (a subscription in the :data:`CALLOUT_QUEUE` queue group, so every
    responder of a bus shares the load, each request going to one): requests are decided one at a
    time, in arrival order, and at most ``max_buffer`` wait; beyond that the bus answers 429 at once
    (nats-server refuses that client, which retries). Whatever happens while deciding, the request
    gets an answer: a decision that raises is answered empty, a refusal (fail closed). It shows in
    ``$SRV`` discovery (on its AUTH-account connection) as :data:`CALLOUT_SERVICE` with one
    endpoint, ``authorize``, and its :class:`CalloutStatistics` in every endpoint's ``data``.

    Args:
        client: a connection of the bus's AUTH account.
        decider: the decision procedure.
        queue: the queue group (the bus's responders must share one).
        max_buffer: how many requests may wait.
    """

    def __init__(
        self,
        client: Client,
        decider: Decider,
        *,
        queue: str = CALLOUT_QUEUE,
        max_buffer: int = CALLOUT_MAX_BUFFER,
    ) -> None:
        self.decider = decider
        self._client = client
        self._queue = queue
        self._max_buffer = max_buffer
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._counts = dict.fromkeys(("granted", "refused", "ignored", "failed"), 0)
        self.micro = MicroService(
            CALLOUT_SERVICE,
            AUTH_CALLOUT_SUBJECT,
            [CALLOUT_ENDPOINT],
            description="nats-server's auth callout: who may connect, and with which permissions",
            metadata={"conat.bus": decider.bus, STORE_METADATA: decider.store.id},
            queue_group=queue,
            data=lambda: dataclasses.asdict(self.statistics()),
        )
        """The service in ``$SRV`` discovery, and its request figures."""

    async def start(self) -> Self:
        """Start answering (once).

        Raises:
            ConatError: the subscription failed (the connection is closed or not allowed).
            ValueError: already started.
        """
        if self._sub is not None:
            raise ValueError("the callout service is already started")
        sub = self._sub = await self._client.subscribe(
            AUTH_CALLOUT_SUBJECT, queue=self._queue, max_buffer=self._max_buffer, cluster_wide=True
        )
        self._task = asyncio.get_running_loop().create_task(self._serve(sub), name="conat-auth-callout")
        await self.micro.advertise(self._client, alive=lambda: not sub.closed)
        return self

    def statistics(self) -> CalloutStatistics:
        sub = self._sub.statistics() if self._sub is not None else None
        counts = self._counts
        return CalloutStatistics(
            answered=sum(counts.values()),
            granted=counts["granted"],
            refused=counts["refused"],
            ignored=counts["ignored"],
            failed=counts["failed"],
            dropped=sub.dropped if sub is not None else 0,
            buffered=sub.buffered if sub is not None else 0,
            connections=len(self.decider.connections),
        )

    async def _serve(self, sub: Subscription) -> None:
        async for msg in sub:  # ends once the subscription has ended and its buffer is empty
            await self._answer(msg)

    async def _answer(self, msg: Message) -> None:
        started = time.perf_counter_ns()
        error: Exception | None = None
        response = b""  # an empty reply is a refusal
        try:
            decision = await self.decider.decide(msg.raw, msg.header(XKEY_HEADER))
        except Exception as e:
            log.exception("the decision on an authorization request failed; refusing it")
            error, outcome = e, "failed"
        else:
            if decision is None:
                outcome = "ignored"
            else:
                response, outcome = decision.response, "granted" if decision.granted else "refused"
        self._counts[outcome] += 1
        self.micro.record(CALLOUT_ENDPOINT, time.perf_counter_ns() - started, error)
        if msg.reply:
            try:
                await msg.respond(response, encoding="raw")
            except ConatError as e:
                log.warning("could not answer an authorization request: %s", e)

    async def aclose(self, timeout: float = CALLOUT_STOP_TIMEOUT) -> None:
        """Stop: nats-server stops routing requests here, the requests already routed are answered
        (for up to ``timeout`` seconds; what is left is not, and nats-server refuses those clients
        at its authorization timeout: they retry), then the service leaves ``$SRV``."""
        sub = self._sub
        if sub is None:
            return
        try:
            await sub.drain(timeout)
        except ConatError as e:  # a closed connection, or no confirmation: stop anyway
            log.debug("draining the callout subscription failed: %s", e)
            await sub.unsubscribe()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                log.warning("stopping the callout: requests left unanswered after %gs", timeout)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.micro.withdraw()
