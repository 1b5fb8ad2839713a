"""A process for the ownership race test: start a keyed actor type at a given wall-clock instant.

``python -m tests.actors.claim_race URL START_AT HOLD`` connects, sleeps until ``START_AT``
(epoch seconds, the same for every process of a trial), starts :class:`Greeter`, and prints one
JSON line: ``{"started": true}`` or ``{"started": false, "code": ...}``; a process that started
keeps serving for ``HOLD`` seconds and prints ``{"final": "owner"}`` or ``{"final": "lost"}``
(it yielded to another owner meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import conat
from actors import ActorSystem, OwnedElsewhere

from .sample_actors import Greeter


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(url: str, start_at: float, hold: float) -> None:
    async with await conat.connect(url, name=f"race-{os.getpid()}") as client:
        system = ActorSystem(client)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        try:
            await system.start(Greeter)
        except OwnedElsewhere as e:
            _say(started=False, code=e.code, running=e.running)
            return
        _say(started=True)
        try:
            await asyncio.wait_for(system.wait(), hold)
        except TimeoutError:
            _say(final="owner")
            await system.stop()
        except OwnedElsewhere:
            _say(final="lost")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
