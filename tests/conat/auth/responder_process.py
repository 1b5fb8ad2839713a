"""A callout responder in a process of its own, for the tests of responders sharing one bus.

Run as ``python -m tests.conat.auth.responder_process URL BUS DIRECTORY PINNED_KEYS``; prints ``ready``
once it answers, and stops when its stdin is closed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from conat.auth import AuthResponder, PublicKeys


async def main(url: str, bus: str, directory: str, keys: str) -> None:
    async with await AuthResponder.start(
        bus=bus, url=url, public_keys=PublicKeys.load(keys), directory=Path(directory)
    ):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
