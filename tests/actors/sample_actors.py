"""Actor classes for the ``conat run`` test (imported by the CLI in a subprocess)."""

from __future__ import annotations

from actors import Actor


class Greeter(Actor, subject="greeter.*"):
    async def greet(self, name: str) -> str:
        return f"hello {name}, from {self.key}"


class Clock(Actor, subject="sampleclock"):
    async def tick(self) -> int:
        return 1
