"""Project activity: how host services tell the runner that a project is in use.

Any service that serves a project (the file server on each call, a watch socket on traffic, the
project process on each exec) publishes an empty message on ``activity.project-<p>`` with
:func:`report_activity`, at most every few seconds per project. The runner subscribes to
``activity.*`` and stops a project whose limits set ``idle_timeout`` once it has been quiet that
long. The subject is inside the project's own ``*.project-<p>`` grant, so the project process and
the project's collaborators may report activity; reporting cannot start, stop or read anything.
"""

from __future__ import annotations

from typing import Final

import conat
from subjects import parse_scope, project_scope, service_subject

__all__ = [
    "ACTIVITY_SERVICE",
    "activity_pattern",
    "activity_subject",
    "project_of_activity",
    "report_activity",
]

ACTIVITY_SERVICE: Final = "activity"


def activity_subject(project_id: str) -> str:
    """``activity.project-<p>``."""
    return service_subject(ACTIVITY_SERVICE, project_scope(project_id))


def activity_pattern() -> str:
    """``activity.*``: what the runner listens on."""
    return ACTIVITY_SERVICE + ".*"


def project_of_activity(subject: str) -> str | None:
    """The project id an activity subject names, or None for anything else."""
    service, _, scope = subject.partition(".")
    if service != ACTIVITY_SERVICE:
        return None
    try:
        kind, ident = parse_scope(scope)
    except conat.InvalidSubject:
        return None
    return ident if kind == "project" else None


async def report_activity(client: conat.Client, project_id: str) -> None:
    """Tell the host that ``project_id`` is in use (fire and forget; errors are swallowed)."""
    try:
        await client.publish(activity_subject(project_id), b"", encoding="raw")
    except conat.ConatError:
        pass
