"""Actor classes for the ``conat run`` test (imported by the CLI in a subprocess)."""

from __future__ import annotations

from actors import Actor


class Greeter(Actor, subject="greeter.*"):
    async def greet(self, name: str) -> str:
        return f"hello {name}, from {self.key}"


class Clock(Actor, subject="sampleclock"):
    async def tick(self) -> int:
        return 1


class TurnLog(Actor, subject="turns.*"):
    """Records each turn (its process, caller, seq, start and end) as one JSON line appended to
    the file named by ``CONAT_TURN_LOG``: the hand-over test reads every turn that ran, including
    those whose reply a killed node lost."""

    async def turn(self, caller: str, seq: int) -> int:
        import asyncio
        import json
        import os
        import time

        start = time.time()
        await asyncio.sleep(0.005)
        end = time.time()
        line = json.dumps({"key": self.key, "pid": os.getpid(), "caller": caller, "seq": seq,
                           "start": start, "end": end})  # fmt: skip
        with open(os.environ["CONAT_TURN_LOG"], "a") as f:
            f.write(line + "\n")
        return os.getpid()
