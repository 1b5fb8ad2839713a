"""Subscribing so that cancellation cannot leave a live subscription behind.

``Client.subscribe`` registers the subscription with the server before it confirms it; a task
cancelled in between would lose the :class:`Subscription` object while the server keeps routing
to it. The actor runtime subscribes in paths that stopping cancels (a type restarting after an
escalation, a claim being acquired), so it goes through :func:`subscribe_or_undo`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from conat import Client, ConatError, Message, Subscription

__all__ = ["subscribe_or_undo"]


async def subscribe_or_undo(
    client: Client, pattern: str, *, dispatch: Callable[[Message], object], **options: Any
) -> Subscription:
    """``client.subscribe(pattern, dispatch=..., **options)``; if the caller is cancelled, the
    subscription (if it was made) is unsubscribed before the cancellation propagates."""
    task = asyncio.ensure_future(client.subscribe(pattern, dispatch=dispatch, **options))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(ConatError, asyncio.CancelledError):
            sub = await task
            await sub.unsubscribe()
        raise
