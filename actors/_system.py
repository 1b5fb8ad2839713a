"""The :class:`ActorSystem`: several actor types in one process on one connection, and their root
supervisor.

Supervision tree: the system supervises each actor type (:class:`ActorRuntime`); a type supervises
its activations. When a type escalates (its activations crashed more than its policy allows), the
system aborts it and starts it afresh after a backoff, counting against the system's own policy;
when that is exceeded too, the system stops everything and :meth:`ActorSystem.wait` raises the
:class:`Escalation` (the process should exit non-zero, as an OTP application would).

Shutdown runs in reverse start order under one deadline for the whole process; each type gets
what is left of it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any, Final, Self, TypeVar

from conat import JSON, Client, ConatError, Message, Subscription
from conat._clock import Clock, SystemClock

from ._actor import Actor
from ._chain import chain_headers
from ._errors import ActorDefinitionError, Escalation
from ._micro import SRV_PATTERN, micro_response, targets
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
        clock: time source for passivation, timers, reminders and backoff (tests pass FakeClock).
        reminders: where reminders are kept (None: actors cannot set reminders).
        policy: the system's restart policy for whole actor types.
        stop_timeout: default deadline of :meth:`stop`.
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
    ) -> None:
        self.client = client
        self.clock: Clock = clock or SystemClock()
        self.reminders = reminders
        self.policy = policy
        self.stop_timeout = stop_timeout
        self.instance_id = secrets.token_hex(8)
        self._rand = rand
        self._runtimes: list[ActorRuntime] = []
        self._trackers: dict[str, RestartTracker] = {}
        self._micro: Subscription | None = None
        self._done = asyncio.Event()
        self._failure: Escalation | None = None
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
    ) -> ActorRuntime:
        """Start serving actor type ``cls``; ``factory`` builds each activation's instance (default
        ``cls()``); ``queue`` overrides the class's queue group."""
        if self._stopping or self._done.is_set():
            raise ConatError("the actor system is stopped")
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise ActorDefinitionError(f"{cls!r} is not an Actor subclass")
        spec = cls.spec()
        if any(r.spec.name == spec.name for r in self._runtimes):
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
        )
        if self._micro is None:
            self._micro = await self.client.subscribe(SRV_PATTERN, dispatch=self._on_srv)
        await runtime.start()
        self._runtimes.append(runtime)
        self._trackers[spec.name] = RestartTracker(self.policy, self._rand)
        return runtime

    def proxy(self, cls: type[A], key: str = "", *, tail: str | None = None, timeout: float = 10.0) -> A:
        return actor_proxy(self.client, cls, key, tail=tail, timeout=timeout)

    # -- discovery -------------------------------------------------------------------------
    def _on_srv(self, msg: Message) -> None:
        if not msg.reply:
            return
        found = targets(msg.subject, self._runtimes)
        if found is None:
            return
        verb, runtimes = found
        for runtime in runtimes:
            self._spawn(self._answer_srv(msg, verb, runtime))

    async def _answer_srv(self, msg: Message, verb: str, runtime: ActorRuntime) -> None:
        try:
            await msg.respond(micro_response(verb, runtime), encoding=JSON.name)
        except ConatError as e:
            log.debug("could not answer %s: %s", msg.subject, e)

    # -- supervision -----------------------------------------------------------------------
    def _on_escalation(self, runtime: ActorRuntime, escalation: Escalation) -> None:
        if not self._stopping:
            self._spawn(self._restart(runtime, escalation))

    async def _restart(self, runtime: ActorRuntime, escalation: Escalation) -> None:
        await runtime.abort()
        decision = self._trackers[runtime.spec.name].crashed(self.clock.now())
        if isinstance(decision, Escalate):
            failure = Escalation("actor system", decision.restarts, decision.within, escalation)
            failure.__cause__ = escalation
            log.critical("%s", failure)
            self._failure = failure
            await self.stop()
            return
        log.warning("restarting actor %s in %.2f s after: %s", runtime.spec.name, decision.delay, escalation)
        await self.clock.sleep_until(self.clock.now() + decision.delay)
        if not self._stopping:
            runtime.tracker = RestartTracker(runtime.spec.policy, self._rand)
            await runtime.start()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shutdown --------------------------------------------------------------------------
    async def stop(self, timeout: float | None = None) -> None:
        """Stop every actor type, newest first, within one overall deadline (default ``stop_timeout``)."""
        if self._stopping:
            await self._done.wait()
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.stop_timeout if timeout is None else timeout)
        try:
            for runtime in reversed(self._runtimes):
                await runtime.stop(max(0.0, deadline - loop.time()))
            micro, self._micro = self._micro, None
            if micro is not None:
                await micro.unsubscribe()
            current = asyncio.current_task()
            others = [t for t in self._tasks if t is not current]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            try:
                await self.client.flush(max(0.1, deadline - loop.time()))
            except ConatError as e:
                log.warning("flush at stop failed: %s", e)
        finally:
            self._done.set()

    async def wait(self) -> None:
        """Return when the system has stopped; raise :class:`Escalation` if it failed."""
        await self._done.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def failure(self) -> Escalation | None:
        return self._failure

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
