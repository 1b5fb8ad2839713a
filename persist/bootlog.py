"""Bootlogs: the progress of starting a project or a host, as a stream frontends follow.

A bootlog is the persist stream ``bootlog`` of the project's (host's) scope, reached on its own
subject, ``bootlog.project.<p>`` or ``bootlog.host.<h>`` (served by
:class:`persist.BootlogService`, which runs with every :class:`persist.PersistServer`). Events live
for an hour (:data:`persist.BOOTLOG_CONFIG`). Whoever drives a start (the runner, master during a
move) publishes an event per step; a frontend iterates :func:`events`: the recent history first,
then each new event as it is committed, with no gap and no duplicate even if the service restarts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Final, final

import msgspec

from conat import Client
from subjects import bootlog_host, bootlog_project, host_scope, project_scope

from ._client import AStream
from ._errors import BadRequest
from ._model import SetResult
from ._service import BOOTLOG_STREAM

__all__ = ["BootlogEvent", "bootlog_stream", "events", "publish"]

_PROGRESS_RANGE: Final = (0.0, 100.0)


@final
class BootlogEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of a start.

    Attributes:
        phase: the step (``"create"``, ``"mount"``, ``"start"``, ``"ready"``...).
        message: for people.
        progress: percent done, 0 to 100, if known.
        error: set when the step failed (the start is over).
        seq, time: where and when it was stored (set when read back).
    """

    phase: str
    message: str = ""
    progress: float | None = None
    error: str | None = None
    seq: int = 0
    time: float = 0.0


class _Body(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    phase: str
    message: str = ""
    progress: float | None = None
    error: str | None = None


def bootlog_stream(client: Client, *, project_id: str | None = None, host_id: str | None = None) -> AStream:
    """The bootlog of exactly one of ``project_id`` or ``host_id``, as an :class:`AStream`
    (a :class:`persist.DStream` can be built on it for a cached view)."""
    if (project_id is None) == (host_id is None):
        raise BadRequest("bootlog", "give exactly one of project_id or host_id")
    if project_id is not None:
        scope, subject = project_scope(project_id), bootlog_project(project_id)
    else:
        assert host_id is not None
        scope, subject = host_scope(host_id), bootlog_host(host_id)
    return AStream(client, scope, BOOTLOG_STREAM, subject=subject)


async def publish(
    client: Client,
    *,
    project_id: str | None = None,
    host_id: str | None = None,
    phase: str,
    message: str = "",
    progress: float | None = None,
    error: str | None = None,
) -> SetResult:
    """Append an event to a bootlog; return once it is stored.

    Raises:
        BadRequest: not exactly one of ``project_id``/``host_id``, an empty phase, or progress
            outside 0..100.
    """
    if not isinstance(phase, str) or not phase:
        raise BadRequest("bootlog", f"phase must be a non-empty string, not {phase!r}")
    if progress is not None and not _PROGRESS_RANGE[0] <= progress <= _PROGRESS_RANGE[1]:
        raise BadRequest("bootlog", f"progress must be between 0 and 100, not {progress!r}")
    stream = bootlog_stream(client, project_id=project_id, host_id=host_id)
    body = _Body(phase=phase, message=message, progress=progress, error=error)
    return await stream.publish(msgspec.to_builtins(body), msg_id=uuid.uuid4().hex)


async def events(
    client: Client,
    *,
    project_id: str | None = None,
    host_id: str | None = None,
    history: bool = True,
    follow: bool = True,
) -> AsyncIterator[BootlogEvent]:
    """The events of a bootlog: its history (if ``history``), then live ones (if ``follow``)."""
    stream = bootlog_stream(client, project_id=project_id, host_id=host_id)
    after = 0
    if history:
        async for batch in stream.get_all():
            for message in batch:
                after = message.seq
                yield _event(message.seq, message.time, message.value())
    if not follow:
        return
    if not history:
        after = await stream.last_seq()
    async for change in stream.changefeed(after, deletes=False):
        for message in change.messages:
            yield _event(message.seq, message.time, message.value())


def _event(seq: int, time: float, body: object) -> BootlogEvent:
    fields = msgspec.convert(body, _Body)
    return BootlogEvent(
        phase=fields.phase,
        message=fields.message,
        progress=fields.progress,
        error=fields.error,
        seq=seq,
        time=time,
    )
