"""One owner per keyed actor type on a bus: a second process refuses instead of splitting keys.

A keyed actor type promises one activation per key. Two processes serving the same keyed
subject break it: without a queue group both handle every request, with one a key's state splits
between them. So a keyed type has exactly one *owner* per bus, found and guarded over the bus
itself, on the claim subject ``$CONAT.claim.<token of the subject pattern>``.

Theory of operation
-------------------
Starting, a process first *probes*: a request on the claim subject before it subscribes there.
nats-server answers "no responders" at once when nobody is subscribed (the usual case: no
owner); a running owner answers with its :class:`OwnerNotice`, and the newcomer refuses with
:class:`OwnedElsewhere`, naming the owner. Only then does the newcomer subscribe to the claim
subject, *announce* itself (publish its notice, with the wall-clock time it became owner) and wait
a short grace before it serves.

Two processes that probe at the same moment both see nobody. The announcements settle it: each
subscribed before announcing, so at least the earlier subscriber receives the later one's
announcement. An owner receiving another owner's notice compares the two (:func:`precedes`:
earlier ``since`` first, then the instance id, so both sides agree): the later one yields; the
earlier one announces again, so that a later owner that never heard of it learns it lost. Every
pair of owners thus ends with one of them yielding, whatever the order of delivery, and the
earliest never yields (a property test checks this on random schedules). A process that yields
within its grace refuses to start; one that yields after it began serving (the grace was too
short for a loaded machine, or the owners could not see each other during a network split and
met again at reconnect, when owners announce again) stops the whole actor system with the same
error, so the process exits and nothing is served twice for long.

On a cluster (several nodes, the two processes connected to different ones), the same holds
because the claim subscription is made with ``cluster_wide=True``: a claimant announces only once
every node routes the claim subject to it, so the later announcement of two reaches the earlier
subscriber whichever node it is published through.

Standby and hand-over. A claimant started with :meth:`Ownership.acquire` ``(standby=True)`` does not
refuse when an owner answers: it waits and claims when the owner is gone. An owner that stops
cleanly (:meth:`release`, after its type answered what it took) publishes a *released* notice on
``<claim subject>.released``, and a standby subscribed there claims at once. An owner that vanishes
(its process killed) is taken over once its claim has been unanswered for the whole *lease*
(:data:`DEFAULT_LEASE`): a standby probes every :data:`STANDBY_POLL` seconds and claims after
``lease`` seconds of "no responders". The owner's side of the lease: an owner whose connection is
down for ``lease / 2`` seconds fences itself (it yields as if it had lost: the system stops serving
the type and exits), so by the time a standby may claim, the old owner no longer runs a turn. A
connection that comes back sooner (its node was killed and it reconnected to another: ~0.2 s
measured) keeps the claim, and no standby has taken it.

Trust: whoever may publish on the claim subject can make an owner yield. With conat's auth only
the bus's trusted principals (hub, the host on its own bus) may; a principal whose grant does not
cover the claim subject cannot run the check at all, and its keyed types start unchecked (a
warning is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final, Literal, final

import msgspec

from conat import Client, ClientState, ConatError, Forbidden, Message, NoResponders, Subscription, Timeout
from subjects import encode_token

from ._errors import OwnedElsewhere

__all__ = [
    "CLAIM_PREFIX",
    "DEFAULT_LEASE",
    "OwnerNotice",
    "Ownership",
    "Verdict",
    "claim_subject",
    "judge",
    "precedes",
]

log = logging.getLogger("conat.actors")

CLAIM_PREFIX: Final = "$CONAT.claim"
PROBE_TIMEOUT: Final = 1.0
"""How long a probe waits when something subscribes to the claim subject but nobody answers
(e.g. a ``nats sub '>'`` session): then the newcomer goes on, and announcements settle it."""
DEFAULT_GRACE: Final = 0.1
DEFAULT_LEASE: Final = 3.0
"""Seconds a claim must go unanswered before a standby takes it; an owner disconnected for half of
it fences itself. Longer than a client's reconnect to another node of a cluster."""
STANDBY_POLL: Final = 0.25
"""Seconds between a standby's probes of its claim subject."""
RELEASED_SUFFIX: Final = "released"
_MAX_NOTICE: Final = 4096

_Text = Annotated[str, msgspec.Meta(max_length=512)]


class OwnerNotice(msgspec.Struct, frozen=True):
    """What a claimant or an owner says on the claim subject (JSON, readable with ``nats sub``)."""

    kind: Literal["probe", "owner", "released"]
    subject: _Text
    name: _Text
    instance: _Text
    since: float = 0.0
    pid: int = 0
    host: _Text = ""
    client: _Text = ""


_DECODER: Final = msgspec.json.Decoder(OwnerNotice)


def claim_subject(pattern: str) -> str:
    """The claim subject of a keyed actor type's subject pattern."""
    return f"{CLAIM_PREFIX}.{encode_token(pattern)}"


def precedes(a: OwnerNotice, b: OwnerNotice) -> bool:
    """Whether owner ``a`` keeps the type when it meets owner ``b`` (a total order: both sides of
    a conflict compute the same answer)."""
    return (a.since, a.instance) < (b.since, b.instance)


class Verdict(enum.Enum):
    IGNORE = "ignore"
    ANSWER = "answer"  # reply to the probe with my notice
    ANNOUNCE = "announce"  # publish my notice: the other owner must learn that it lost
    YIELD = "yield"  # the other owner precedes me


def judge(me: OwnerNotice, other: OwnerNotice) -> Verdict:
    """What owner ``me`` does about a notice ``other`` seen on its claim subject (pure)."""
    if other.instance == me.instance or other.subject != me.subject:
        return Verdict.IGNORE
    if other.kind == "released":
        return Verdict.IGNORE  # said on its own subject, for standbys; an owner has nothing to do
    if other.kind == "probe":
        return Verdict.ANSWER
    return Verdict.YIELD if precedes(other, me) else Verdict.ANNOUNCE


@final
class Ownership:
    """The claim of one keyed actor type by one process (see the module docstring).

    Args:
        client: the connection to claim on.
        name: the actor type's name (for messages).
        subject: the type's subject pattern (what is owned).
        instance: this claimant's id (unique per type and process).
        on_lost: called (from the connection's read loop) when this owner yields after
            :meth:`acquire` returned; the claim is already released then.
        grace: seconds to wait after announcing, before :meth:`acquire` returns.
        lease: seconds an owner may be unreachable before a standby takes over (module docstring).
    """

    def __init__(
        self,
        client: Client,
        name: str,
        subject: str,
        instance: str,
        *,
        on_lost: Callable[[OwnedElsewhere], object] | None = None,
        grace: float = DEFAULT_GRACE,
        probe_timeout: float = PROBE_TIMEOUT,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease: must be positive, got {lease!r}")
        self.client = client
        self.name = name
        self.subject = subject
        self.claim = claim_subject(subject)
        self.instance = instance
        self.grace = grace
        self.probe_timeout = probe_timeout
        self.lease = lease
        self.released_subject = f"{self.claim}.{RELEASED_SUFFIX}"
        self._fence: asyncio.TimerHandle | None = None
        self._on_lost = on_lost
        self._me: OwnerNotice | None = None
        self._lost: OwnedElsewhere | None = None
        self._acquired = False
        self._sub: Subscription | None = None
        self._forget_state: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # answers and announcements
        self._releasing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Ownership {self.name} {self.subject!r} {self.instance}>"

    @property
    def checked(self) -> bool:
        """Whether this connection may use the claim subject (else the type runs unchecked)."""
        perms = self.client.permissions
        return perms is None or (perms.can_publish(self.claim) and perms.can_subscribe(self.claim))

    def _notice(self, kind: Literal["probe", "owner", "released"], since: float = 0.0) -> OwnerNotice:
        return OwnerNotice(
            kind,
            self.subject,
            self.name,
            self.instance,
            since,
            os.getpid(),
            socket.gethostname(),
            self.client.name or "",
        )

    async def acquire(self, *, standby: bool = False) -> None:
        """Become the owner, or raise :class:`OwnedElsewhere` naming the owner.

        With ``standby``, wait instead until the owner releases the claim or has been unreachable
        for the whole lease, then become the owner (module docstring); cancel to give up waiting.

        All or nothing: on any failure (or cancellation) nothing stays subscribed or announced.
        """
        if standby and self.checked:
            await self._wait_for_vacancy()
        await self._acquire()

    async def _wait_for_vacancy(self) -> None:
        """Return once the claim is released, or unanswered for :attr:`lease` seconds."""
        released = asyncio.Event()
        try:
            sub = await self.client.subscribe(
                self.released_subject, dispatch=lambda _msg: released.set(), cluster_wide=True
            )
        except Forbidden:
            sub = None
        loop = asyncio.get_running_loop()
        absent_since: float | None = None
        try:
            while True:
                now = loop.time()
                if released.is_set() or (absent_since is not None and now - absent_since >= self.lease):
                    return
                try:
                    await self._probe()
                    absent_since = now if absent_since is None else absent_since
                except OwnedElsewhere:
                    absent_since = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released.wait(), STANDBY_POLL)
        finally:
            if sub is not None:
                with contextlib.suppress(ConatError):
                    await sub.unsubscribe()

    async def _acquire(self) -> None:
        if not self.checked:
            self._unchecked("the grant does not cover it")
            return
        try:
            try:
                await self._probe()
            except Forbidden as e:
                self._unchecked(str(e))
                return
            self._me = self._notice("owner", time.time())
            try:
                self._sub = await self.client.subscribe(
                    self.claim, dispatch=self._on_notice, cluster_wide=True
                )
            except Forbidden as e:
                self._unchecked(str(e))
                return
            self._forget_state = self.client.on_state_change(self._on_state)
            await self._announce()
            await asyncio.sleep(self.grace)
            if self._lost is not None:
                raise self._lost
            self._acquired = True
        except BaseException:
            await self.release()
            raise

    def _unchecked(self, why: str) -> None:
        self._me = None
        log.warning(
            "%s (%s): this connection may not use %s (%s), so a second process serving the same "
            "keyed type cannot be detected",
            self.name,
            self.subject,
            self.claim,
            why,
        )

    async def _probe(self) -> None:
        """Ask whoever subscribes to the claim subject; raise if an owner answers."""
        probe = self._notice("probe")
        try:
            async for reply in self.client.request_many(
                self.claim, probe, timeout=self.probe_timeout, encoding="json"
            ):
                other = _decode(reply)
                if other is not None and other.kind == "owner" and judge(probe, other) is not Verdict.IGNORE:
                    raise OwnedElsewhere(self.name, self.subject, _owner(other), running=False)
        except NoResponders:
            return  # nobody subscribes: no owner (the usual case)
        except Timeout:
            log.info("%s: something subscribes to %s but no owner answered", self.name, self.claim)
        except (OwnedElsewhere, Forbidden):
            raise
        except ConatError as e:  # a foreign responder's error reply: it is not an owner
            log.info("%s: probing %s: %s", self.name, self.claim, e)

    async def release(self) -> None:
        """Give up the claim (idempotent): unsubscribe, stop announcing, and tell a standby
        (a *released* notice) if this process held the claim."""
        held = self._acquired and self._lost is None
        self._acquired = False
        fence, self._fence = self._fence, None
        if fence is not None:
            fence.cancel()
        forget, self._forget_state = self._forget_state, None
        if forget is not None:
            with contextlib.suppress(ValueError):
                forget()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(ConatError):
                await sub.unsubscribe()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if held and sub is not None and self._me is not None:
            with contextlib.suppress(ConatError):  # after the unsubscribe: a standby's probe finds nobody
                await self.client.publish(self.released_subject, self._notice("released"), encoding="json")

    @property
    def lost(self) -> OwnedElsewhere | None:
        return self._lost

    # -- the claim subject ---------------------------------------------------------------------
    def _on_notice(self, msg: Message) -> None:
        me = self._me
        if me is None or self._lost is not None:
            return
        other = _decode(msg)
        if other is None:
            return
        verdict = judge(me, other)
        if verdict is Verdict.ANSWER and msg.reply:
            self._spawn(self._answer(msg, me))
        elif verdict is Verdict.ANNOUNCE:
            self._spawn(self._announce())
        elif verdict is Verdict.YIELD:
            self._yield(other)

    def _yield(self, winner: OwnerNotice | None) -> None:
        running = self._acquired
        owner = _owner(winner) if winner is not None else {"fenced": f"disconnected for {self.lease / 2:g} s"}
        lost = OwnedElsewhere(self.name, self.subject, owner, running=running)
        self._lost = lost
        if running:  # else acquire() raises it: the caller reports it
            log.error("%s", lost)
        self._releasing = asyncio.ensure_future(self.release())
        if running and self._on_lost is not None:
            self._on_lost(lost)

    def _on_state(self, state: ClientState) -> None:
        if self._lost is not None or self._sub is None:
            return
        if state is ClientState.CONNECTED:
            if self._fence is not None:
                self._fence.cancel()
                self._fence = None
            self._spawn(self._announce())  # owners that met while split find each other now
        elif state is ClientState.RECONNECTING and self._fence is None:
            # the lease's owner side: a standby may claim after `lease` of silence, so stop first
            self._fence = asyncio.get_running_loop().call_later(self.lease / 2, self._fenced)

    def _fenced(self) -> None:
        self._fence = None
        if self._lost is None and self._sub is not None:
            self._yield(None)

    async def _announce(self) -> None:
        if self._me is not None:
            try:
                await self.client.publish(self.claim, self._me, encoding="json")
            except ConatError as e:
                log.warning("%s: could not announce on %s: %s", self.name, self.claim, e)

    async def _answer(self, msg: Message, me: OwnerNotice) -> None:
        with contextlib.suppress(ConatError):
            await msg.respond(me, encoding="json")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _decode(msg: Message) -> OwnerNotice | None:
    if len(msg.raw) > _MAX_NOTICE:
        return None
    try:
        return _DECODER.decode(msg.raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _owner(notice: OwnerNotice) -> dict[str, object]:
    return {
        "instance": notice.instance,
        "pid": notice.pid,
        "host": notice.host,
        "client": notice.client,
        "since": notice.since,
    }
