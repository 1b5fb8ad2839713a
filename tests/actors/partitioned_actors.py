"""Actor classes for the ``conat run --partitions`` test (imported by the CLI in subprocesses)."""

from __future__ import annotations

import os

from actors import Actor


class Where(Actor, subject="where.*"):
    """Keyed: says which process serves its key."""

    async def pid(self) -> int:
        return os.getpid()


class Lone(Actor, subject="lone"):
    """Unkeyed without a queue group: one server even when the keyed types are partitioned."""

    async def pid(self) -> int:
        return os.getpid()
