"""The work queue of host actions: durable, one owner at a time, retried with backoff.

Theory of operation
-------------------
An action is a row of ``actions``: a ``kind`` (``project.move``, ``provider.create``...), a target,
its arguments (msgpack), and its state::

    pending --claim--> running --done--> done
       ^                  |  \\--permanent failure, or attempts used up--> failed
       \\---- retry ------/  (not_before = now + backoff(attempts))

**Leases.** A worker claims the oldest ready action in one ``UPDATE ... RETURNING`` (atomic: two
workers, in one master or in two sharing the database, never claim the same row), becoming its
``owner`` until ``lease_until``, and renews the lease while the action runs. An action whose owner
died (master was killed) is claimable again once its lease has passed, so it runs again: every
handler is therefore **idempotent** (it checks what is done already and continues from there, or
rolls back and starts over).

**Retries.** A handler that raises :class:`Permanent` fails the action at once. Any other
exception is retried after a delay from :class:`conat.Backoff` (the project's one backoff policy:
doubling from ``backoff_min`` up to ``backoff_max``, with up to 50 % random extra so that actions
failing together do not retry together), until ``max_attempts``; the last error stays in the row.

**Deduplication.** ``dedup`` (e.g. ``move:<project>``) is unique among active (pending or running)
actions: enqueueing a duplicate returns the active one's id. It is cleared when the action ends.

Callers that want the outcome (``projects.move(wait=True)``) :meth:`~WorkQueue.wait` for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

import conat

from ._db import Database, Tx

__all__ = ["Action", "Outcome", "Permanent", "WorkQueue"]

log = logging.getLogger("conat.master.queue")

_POLL: Final = 1.0


class Permanent(Exception):
    """Raised by a handler: this action cannot succeed; fail it without retrying."""


class Action(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    target: str
    args: dict[str, Any]
    attempts: int
    max_attempts: int


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    state: str
    error: str = ""
    result: Any = None
    attempts: int = 0


Handler = Callable[[Action], Awaitable[Any]]


class WorkQueue:
    """See the module docstring. ``register`` handlers, then :meth:`start`; :meth:`aclose`."""

    def __init__(
        self,
        db: Database,
        wall: Callable[[], float],
        *,
        lease: float = 30.0,
        workers: int = 4,
        backoff_min: float = 0.5,
        backoff_max: float = 60.0,
    ) -> None:
        self.db = db
        self._wall = wall
        self.lease = lease
        self.workers = workers
        self.owner = secrets.token_hex(8)
        self.handlers: dict[str, Handler] = {}
        self._backoff = conat.Backoff(initial=backoff_min, maximum=backoff_max, factor=2.0, jitter=0.5)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[int, list[asyncio.Future[Outcome]]] = {}

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` (1 = the first retry)."""
        return self._backoff.delay(attempts, random.random())

    async def enqueue(
        self, tx: Tx, kind: str, target: str, args: dict[str, Any], *, dedup: str | None = None,
        max_attempts: int = 10, delay: float = 0.0,
    ) -> int:  # fmt: skip
        """Add an action in the caller's transaction (it runs once that commits; call :meth:`wake`
        after the commit to start it at once). A ``dedup`` key already active returns that action."""
        if dedup is not None:
            row = await tx.fetch_one("SELECT id FROM actions WHERE dedup = ?", (dedup,))
            if row is not None:
                return int(row[0])
        now = self._wall()
        return await tx.execute(
            "INSERT INTO actions (kind, target, args, not_before, created, max_attempts, dedup) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, target, msgspec.msgpack.encode(args), now + delay, now, max_attempts, dedup),
        )

    def wake(self) -> None:
        self._wake.set()

    async def claim(self) -> Action | None:
        """Take the oldest ready action (pending and due, or running with an expired lease)."""
        now = self._wall()
        async with self.db.transaction() as tx:
            row = await tx.fetch_one(
                "UPDATE actions SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1 "
                "WHERE id = (SELECT id FROM actions WHERE (state = 'pending' AND not_before <= ?) "
                "OR (state = 'running' AND lease_until < ?) ORDER BY id LIMIT 1) "
                "RETURNING id, kind, target, args, attempts, max_attempts",
                (self.owner, now + self.lease, now, now),
            )
        if row is None:
            return None
        return Action(
            id=row[0], kind=row[1], target=row[2], args=msgspec.msgpack.decode(row[3]), attempts=row[4],
            max_attempts=row[5],
        )  # fmt: skip

    async def _renew(self, action_id: int) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            async with self.db.transaction() as tx:
                await tx.execute(
                    "UPDATE actions SET lease_until = ? WHERE id = ? AND owner = ? AND state = 'running'",
                    (self._wall() + self.lease, action_id, self.owner),
                )

    async def execute(self, action: Action) -> Outcome:
        """Run one claimed action and record what happened."""
        handler = self.handlers.get(action.kind)
        renewing = asyncio.ensure_future(self._renew(action.id))
        try:
            if handler is None:
                raise Permanent(f"no handler for actions of kind {action.kind!r}")
            result = await handler(action)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is recorded with its reason
            permanent = isinstance(e, Permanent) or action.attempts >= action.max_attempts
            error = str(e) or type(e).__name__
            log.warning("action %d (%s %s) failed (attempt %d): %s", action.id, action.kind, action.target,
                        action.attempts, error)  # fmt: skip
            return await self._finish(action, "failed" if permanent else "pending", error=error)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        return await self._finish(action, "done", result=result)

    async def _finish(self, action: Action, state: str, *, error: str = "", result: Any = None) -> Outcome:
        now = self._wall()
        async with self.db.transaction() as tx:
            if state == "pending":
                await tx.execute(
                    "UPDATE actions SET state = 'pending', owner = NULL, lease_until = NULL, error = ?, "
                    "not_before = ? WHERE id = ? AND owner = ?",
                    (error, now + self.backoff(action.attempts), action.id, self.owner),
                )
            else:
                await tx.execute(
                    "UPDATE actions SET state = ?, owner = NULL, lease_until = NULL, finished = ?, error = ?, "
                    "result = ?, dedup = NULL WHERE id = ? AND owner = ?",
                    (state, now, error, msgspec.msgpack.encode(result), action.id, self.owner),
                )
        outcome = Outcome(id=action.id, state=state, error=error, result=result, attempts=action.attempts)
        if state != "pending":
            for waiter in self._waiters.pop(action.id, []):
                if not waiter.done():
                    waiter.set_result(outcome)
        else:
            self._wake.set()
        return outcome

    async def outcome(self, action_id: int) -> Outcome | None:
        async with self.db.reading() as tx:
            row = await tx.fetch_one(
                "SELECT state, error, result, attempts FROM actions WHERE id = ?", (action_id,)
            )
        if row is None:
            return None
        result = msgspec.msgpack.decode(row[2]) if row[2] is not None else None
        return Outcome(id=action_id, state=row[0], error=row[1], result=result, attempts=row[3])

    async def wait(self, action_id: int, timeout: float) -> Outcome:
        """The action's outcome once it is done or failed (or its current state at the deadline)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(action_id, []).append(future)
        try:
            current = await self.outcome(action_id)
            if current is None or current.state in ("done", "failed"):
                return current or Outcome(id=action_id, state="failed", error="no such action")
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                return await self.outcome(action_id) or Outcome(id=action_id, state="failed", error="gone")
        finally:
            waiters = self._waiters.get(action_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[action_id]

    async def _worker(self) -> None:
        while True:
            try:
                action = await self.claim()
            except Exception:
                log.exception("the work queue could not claim an action")
                action = None
            if action is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _POLL)
                continue
            try:
                await self.execute(action)
            except Exception:
                log.exception("action %d could not be recorded", action.id)

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]

    async def aclose(self) -> None:
        """Stop the workers. Actions they were running keep their lease and run again later (after
        the lease, by this or another master): handlers are idempotent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
