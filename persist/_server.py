"""The persist server: runs the persist service (and the bootlogs) on a connection.

It composes the pieces: the roots' lock, the stream store, the bookkeeping the activations share
and the actor system the services run in; and it stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Self

from actors import ActorSystem, Escalation, OwnedElsewhere, Partitions
from conat import Client

from ._placement import Placement
from ._replies import _Shared
from ._rootlock import RootLock
from ._service import BootlogService, PersistService
from ._store import StreamStore
from ._wire import MAX_PAGE_BYTES, MAX_PAGE_MSGS

__all__ = ["PersistServer"]

DEFAULT_MAX_INFLIGHT: Final = 4096
DEFAULT_MAX_WAITERS: Final = 4096
DEFAULT_SWEEP_INTERVAL: Final = 30.0


class PersistServer:
    """Runs the persist service on a connection: one :class:`PersistService` activation per scope.

    **One per root.** Stream files have exactly one writer: :meth:`start` takes an advisory lock on
    every root of ``placement`` (:meth:`Placement.lock_roots`) and refuses to start, with
    :class:`RootInUse`, when another service (in this process or another) holds one; :meth:`aclose`
    gives them back, and so does the kernel if the process dies. So several services may share a bus
    (on different roots, for different scopes) but never a root.

    Args:
        client: the connection to serve on.
        placement: where stream files live (``Placement.from_sources()`` reads the environment).
        store: the stream store (default: one over ``placement`` with its defaults).
        subject: the pattern served (default ``persist.*.>``, every scope of the bus).
        bootlog: also serve the bootlogs (:class:`BootlogService`) from the same store.
        partitions: serve only these partitions of the scopes (a partitioned worker: ``conat persist
            serve --workers N``); the bus must split ``subject`` with :func:`persist_mappings`. Each
            worker locks its own partition of the roots, and a worker of partition 0 also serves the
            bootlogs, sending each on to the worker of its scope.
        max_inflight, max_waiters, sweep_interval: see :mod:`persist._service`.
        max_page_msgs, max_page_bytes: the caps on a page of messages, whatever a client asks.
    """

    def __init__(
        self,
        client: Client,
        placement: Placement,
        *,
        store: StreamStore | None = None,
        subject: str = "persist.*.>",
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        max_page_msgs: int = MAX_PAGE_MSGS,
        max_page_bytes: int = MAX_PAGE_BYTES,
        bootlog: bool = True,
        partitions: Partitions | None = None,
    ) -> None:
        if max_page_msgs < 1 or max_page_bytes < 1:
            raise ValueError(f"page caps must be positive, not {max_page_msgs!r}, {max_page_bytes!r}")
        self.client = client
        self._bootlog = bootlog
        self.placement = placement
        self.store = (
            store if store is not None else StreamStore(placement.locate, archive=placement.archive_path)
        )
        self._owns_store = store is None
        self._shared = _Shared(
            self.store, placement, max_inflight, max_waiters, sweep_interval, (max_page_msgs, max_page_bytes)
        )
        self._system = ActorSystem(client)
        self._subject = subject
        self._partitions = partitions
        self._shared.forward_bootlogs = partitions is not None
        self._lock: RootLock | None = None

    async def start(self) -> Self:
        """Take the roots' lock, then serve.

        Raises:
            RootInUse: another persist service holds one of the placement's roots.
            StorageError: a root cannot be created, or its lock file opened.
        """
        parts = self._partitions
        partition = None if parts is None else (parts.owned[0], parts.count)
        if parts is not None and len(parts.owned) != 1:
            raise ValueError(f"a partitioned persist worker serves one partition, not {parts}")
        self._lock = await asyncio.to_thread(RootLock.acquire, self.placement.lock_roots(), partition)
        try:
            await self._serve()
        except BaseException:
            await self._system.stop(0)
            self._lock.release()
            raise
        return self

    async def _serve(self) -> None:
        cls: type[PersistService] = PersistService
        if self._subject != PersistService.spec().subject:
            cls = type("PersistService", (PersistService,), {}, subject=self._subject)
        shared = self._shared
        parts = self._partitions
        await self._system.start(cls, factory=lambda: cls(shared), partitions=parts)
        if self._bootlog and (parts is None or 0 in parts.owned):
            await self._system.start(BootlogService, factory=lambda: BootlogService(shared))

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def failure(self) -> Escalation | OwnedElsewhere | None:
        """Why the service gave up, if it did: its activations kept crashing, or another process
        serves these scopes on this bus (nothing is served here any more)."""
        return self._system.failure

    async def wait(self) -> None:
        """Return when the service has stopped (:meth:`aclose`, or it gave up).

        Raises:
            actors.Escalation: it gave up after repeated crashes. It serves nothing any more, and
                nothing restarts it in this process: a command running it should exit non-zero so
                its supervisor (systemd, a container runtime) starts a fresh one.
        """
        await self._system.wait()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop taking requests, let the operations in flight answer, then close the store."""
        await self._system.stop(timeout)
        for task in list(self._shared.waiting):  # their callers retry on the next service
            task.cancel()
        tasks = list(self._shared.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # the fast path's operations: they have no task
            await asyncio.wait_for(self._shared.inflight.drained(), timeout)
        if self._owns_store:
            await self.store.aclose()
        if self._lock is not None:  # after the files are closed: the next service may open them
            self._lock.release()
