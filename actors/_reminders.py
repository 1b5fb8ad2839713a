"""Reminders: timers that outlive an activation and the process, kept in a :class:`ReminderStore`.

The runtime owns scheduling (it loads an actor type's reminders when the type starts, activates the
key when one is due and runs ``on_reminder``); a store only keeps them. The durable store is the
persist layer's job (a reminder is a KV entry of the scope); :class:`MemoryReminderStore` is the
in-process stand-in, which loses reminders with the process. Times are wall-clock epoch seconds,
so they keep their meaning across restarts.
"""

from __future__ import annotations

from typing import Protocol, final

import msgspec

__all__ = ["MemoryReminderStore", "Reminder", "ReminderStore"]


class Reminder(msgspec.Struct, frozen=True):
    """A reminder of one key of one actor type: due at ``due`` (epoch s), then every ``period``."""

    actor: str
    key: str
    name: str
    due: float
    period: float | None = None


class ReminderStore(Protocol):
    """Where reminders live. Implementations must be safe to call concurrently."""

    async def save(self, reminder: Reminder) -> None:
        """Insert or replace the reminder ``(actor, key, name)``."""
        ...

    async def delete(self, actor: str, key: str, name: str) -> None:
        """Remove a reminder; removing a missing one is not an error."""
        ...

    async def load(self, actor: str) -> list[Reminder]:
        """Every reminder of the actor type ``actor``."""
        ...


@final
class MemoryReminderStore:
    """Reminders in a dict: survives passivation and actor-type restarts, not the process."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], Reminder] = {}

    async def save(self, reminder: Reminder) -> None:
        self._items[(reminder.actor, reminder.key, reminder.name)] = reminder

    async def delete(self, actor: str, key: str, name: str) -> None:
        self._items.pop((actor, key, name), None)

    async def load(self, actor: str) -> list[Reminder]:
        return [r for (a, _, _), r in self._items.items() if a == actor]
