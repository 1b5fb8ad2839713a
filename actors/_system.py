"""The :class:`ActorSystem`: several actor types in one process on one connection, and their root
supervisor.

Supervision tree: the system supervises each actor type (:class:`ActorRuntime`); a type supervises
its activations. When a type escalates (its activations crashed more than its policy allows), the
system aborts it and starts it afresh after a backoff, counting against the system's own policy
(a restart that fails to start counts as one more crash); when that is exceeded too, the system
stops everything and :meth:`ActorSystem.wait` raises the :class:`Escalation` (the process should
exit non-zero, as an OTP application would).

Ownership: a keyed type has one owner per bus (:mod:`actors._ownership`). :meth:`ActorSystem.start`
claims it before serving and refuses with :class:`OwnedElsewhere` when another process owns it;
the claim is held until :meth:`ActorSystem.stop` (across restarts of the type). If this process
yields the type later (two owners met), the system stops and :meth:`wait` raises that error.

Starting a type is all or nothing: if :meth:`start` raises, nothing of the type is subscribed,
claimed or discoverable. Shutdown runs in reverse start order under one deadline for the whole
process; each type gets what is left of it. Every request a type accepted is answered (its reply,
or 503), whatever its key was doing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, Final, Self, TypeVar

from conat import Client, Clock, ConatError, SystemClock

from ._actor import Actor
from ._chain import chain_headers
from ._errors import ActorDefinitionError, Escalation, OwnedElsewhere
from ._ownership import DEFAULT_GRACE, DEFAULT_LEASE, Ownership
from ._partitions import Partitions, check_mapping
from ._policy import Escalate, RestartPolicy, RestartTracker
from ._reminders import ReminderStore
from ._runtime import ActorRuntime

__all__ = ["ActorSystem", "actor_proxy"]

log = logging.getLogger("conat.actors")

A = TypeVar("A", bound=Actor)
DEFAULT_STOP_TIMEOUT: Final = 10.0
SYSTEM_POLICY: Final = RestartPolicy(max_restarts=3, within=60.0, backoff_min=0.5, backoff_max=10.0)


def actor_proxy(
    client: Client, cls: type[A], key: str = "", *, tail: str | None = None, timeout: float = 10.0
) -> A:
    """A typed proxy calling the endpoints of ``cls`` for ``key``: ``await proxy.method(...)``.

    Called from inside an actor's turn, the proxy sends the call chain along, so a call that would
    come back to a key already waiting in the chain is refused at once with 508 instead of
    deadlocking until the timeout. Raises :class:`ActorDefinitionError` if ``key`` does not fit
    the actor's subject pattern.
    """
    return client.service(cls, cls.spec().subject_for(key, tail), timeout=timeout, headers=chain_headers)


class ActorSystem:
    """Hosts actor types on one :class:`conat.Client`. Use ``async with``, or call :meth:`stop`.

    Args:
        client: the connection every actor type subscribes on (not closed by the system).
        clock: time source for passivation, timers, reminders and backoff (tests pass ``conat.testing.FakeClock``).
        reminders: where reminders are kept (None: actors cannot set reminders).
        policy: the system's restart policy for whole actor types.
        stop_timeout: default deadline of :meth:`stop`.
        claim_grace: seconds a keyed type waits after claiming ownership before it serves, so
            that two processes starting it at the same moment settle who owns it first (real
            time, not ``clock``: it is about the network).
        claim_lease: seconds a keyed type's claim may go unanswered before a standby takes it
            over; an owner whose connection is down for half of it stops serving the type.
    """

    def __init__(
        self,
        client: Client,
        *,
        clock: Clock | None = None,
        reminders: ReminderStore | None = None,
        policy: RestartPolicy = SYSTEM_POLICY,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        rand: Callable[[], float] = random.random,
        claim_grace: float = DEFAULT_GRACE,
        claim_lease: float = DEFAULT_LEASE,
    ) -> None:
        self.client = client
        self.clock: Clock = clock or SystemClock()
        self.reminders = reminders
        self.policy = policy
        self.stop_timeout = stop_timeout
        self.claim_grace = claim_grace
        self.claim_lease = claim_lease
        self.instance_id = secrets.token_hex(8)
        self._rand = rand
        self._runtimes: list[ActorRuntime] = []
        self._starting: set[str] = set()
        self._trackers: dict[str, RestartTracker] = {}
        self._claims: dict[str, list[Ownership]] = {}
        self._done = asyncio.Event()
        self._failure: Escalation | OwnedElsewhere | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<ActorSystem {self.instance_id} types={[r.spec.name for r in self._runtimes]}>"

    @property
    def runtimes(self) -> list[ActorRuntime]:
        return list(self._runtimes)

    def runtime(self, cls_or_name: type[Actor] | str) -> ActorRuntime:
        name = cls_or_name if isinstance(cls_or_name, str) else cls_or_name.spec().name
        for runtime in self._runtimes:
            if runtime.spec.name == name:
                return runtime
        raise KeyError(name)

    async def start(
        self,
        cls: type[Actor],
        *,
        factory: Callable[[], Actor] | None = None,
        queue: str | None = None,
        partitions: Partitions | None = None,
        standby: bool = False,
    ) -> ActorRuntime:
        """Start serving actor type ``cls``; ``factory`` builds each activation's instance (default
        ``cls()``); ``queue`` overrides the class's queue group.

        ``standby`` (a keyed type): when another process owns it (or the partitions asked for),
        wait until that owner stops or has been unreachable for the claim's lease, then serve
        (:mod:`actors._ownership`), instead of refusing. Cancel to give up waiting.

        All or nothing: when it raises, nothing of the type is left subscribed, claimed or
        discoverable, and a later start may try again.

        Raises:
            OwnedElsewhere: ``cls`` is keyed and another process serves it on this bus.
            ActorDefinitionError: ``cls`` is not an actor class, or its name already runs here.
            ConatError: what subscribing or the reminder store raised; the system is stopped.
        """
        if self._stopping or self._done.is_set():
            raise ConatError("the actor system is stopped")
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise ActorDefinitionError(f"{cls!r} is not an Actor subclass")
        spec = cls.spec()
        if spec.name in self._starting or any(r.spec.name == spec.name for r in self._runtimes):
            raise ActorDefinitionError(f"an actor named {spec.name!r} already runs in this system")
        runtime = ActorRuntime(
            cls,
            self.client,
            factory=factory,
            clock=self.clock,
            reminders=self.reminders,
            on_escalation=self._on_escalation,
            rand=self._rand,
            queue=queue,
            instance_id=self.instance_id,
            partitions=partitions,
        )
        if partitions is not None and not spec.keyed:
            raise ActorDefinitionError(
                f"actor {spec.name!r} ({spec.subject}) is not keyed: nothing to partition"
            )
        claims = [
            Ownership(
                self.client,
                spec.name,
                subject,
                runtime.micro.id,
                on_lost=lambda lost: self._on_lost(runtime, lost),
                grace=self.claim_grace,
                lease=self.claim_lease,
            )
            for subject in (runtime.subjects() if spec.keyed else [])
        ]  # one claim per partition: each partition has one owner
        self._starting.add(spec.name)
        try:
            taken: list[Ownership] = []
            try:
                for claim in claims:
                    await claim.acquire(standby=standby)
                    taken.append(claim)
                await runtime.start()
                if partitions is not None:
                    await check_mapping(
                        self.client, spec.subject, spec.subject_for, partitions, self.instance_id
                    )
                await runtime.micro.advertise(self.client)
            except BaseException:
                await runtime.abort()
                await runtime.micro.withdraw()
                for claim in taken:
                    await claim.release()
                raise
        finally:
            self._starting.discard(spec.name)
        if self._stopping:  # stop() ran meanwhile and could not see this type
            await runtime.stop(0.0)
            await runtime.micro.withdraw()
            for claim in claims:
                await claim.release()
            raise ConatError("the actor system is stopped")
        self._runtimes.append(runtime)
        self._trackers[spec.name] = RestartTracker(self.policy, self._rand)
        if claims:
            self._claims[spec.name] = claims
        return runtime

    def proxy(self, cls: type[A], key: str = "", *, tail: str | None = None, timeout: float = 10.0) -> A:
        return actor_proxy(self.client, cls, key, tail=tail, timeout=timeout)

    # -- supervision -----------------------------------------------------------------------
    def _on_escalation(self, runtime: ActorRuntime, escalation: Escalation) -> None:
        if not self._stopping:
            self._spawn(self._restart(runtime, escalation))

    async def _restart(self, runtime: ActorRuntime, escalation: Escalation) -> None:
        """Abort the type, then start it again after the system's backoff, until it starts or the
        system's policy gives up (each failed start counts as one more crash)."""
        await runtime.abort()
        tracker = self._trackers[runtime.spec.name]
        cause: BaseException = escalation
        while not self._stopping:
            decision = tracker.crashed(self.clock.now())
            if isinstance(decision, Escalate):
                failure = Escalation("actor system", decision.restarts, decision.within, cause)
                failure.__cause__ = cause
                log.critical("%s", failure)
                await self._fail(failure)
                return
            log.warning("restarting actor %s in %.2f s after: %s", runtime.spec.name, decision.delay, cause)
            await self.clock.sleep_until(self.clock.now() + decision.delay)
            if self._stopping:
                return
            runtime.tracker = RestartTracker(runtime.spec.policy, self._rand)
            try:
                await runtime.start()
                return
            except Exception as e:  # noqa: BLE001 - start is all or nothing: nothing is left serving
                log.error("restarting actor %s failed: %s", runtime.spec.name, e)
                cause = e

    def _on_lost(self, runtime: ActorRuntime, lost: OwnedElsewhere) -> None:
        """This process yielded a keyed type it serves: stop serving it now, then stop."""
        if self._failure is None:
            self._failure = lost
        self._spawn(self._lose(runtime, lost))

    async def _lose(self, runtime: ActorRuntime, lost: OwnedElsewhere) -> None:
        await runtime.abort()
        await self._fail(lost)

    async def _fail(self, failure: Escalation | OwnedElsewhere) -> None:
        if self._failure is None:
            self._failure = failure
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shutdown --------------------------------------------------------------------------
    async def stop(self, timeout: float | None = None) -> None:
        """Stop every actor type, newest first, within one overall deadline (default ``stop_timeout``).

        Restarts in progress are cancelled first (so no type comes back during the stop), then
        each type stops gracefully; claims are released and discovery withdrawn last.
        """
        if self._stopping:
            await self._done.wait()
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.stop_timeout if timeout is None else timeout)
        try:
            current = asyncio.current_task()
            others = [t for t in self._tasks if t is not current]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for runtime in reversed(self._runtimes):
                await runtime.stop(max(0.0, deadline - loop.time()))
                await runtime.micro.withdraw()
            for claims in self._claims.values():
                for claim in claims:
                    await claim.release()
            self._claims.clear()
            try:
                await self.client.flush(max(0.1, deadline - loop.time()))
            except ConatError as e:
                log.warning("flush at stop failed: %s", e)
        finally:
            self._done.set()

    async def wait(self) -> None:
        """Return when the system has stopped; raise :class:`Escalation` if it gave up after
        repeated crashes, or :class:`OwnedElsewhere` if it yielded a keyed type to another
        process."""
        await self._done.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def failure(self) -> Escalation | OwnedElsewhere | None:
        return self._failure

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
