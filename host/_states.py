"""The life of a project on a host, as data.

Theory of operation
-------------------
A project is in exactly one :data:`ProjectState`. Operations and observations are *events*; the
table :data:`TRANSITIONS` says which event is legal in which state and where it leads. Anything not
in the table raises :class:`~host.WrongState` and changes nothing, so a caller asking for the
impossible (``stop`` an opened project, ``start`` a running one) gets a coded error, never a
half-done operation. ::

                 start                started
      opened ───────────▶ starting ───────────▶ running
        ▲                   │  │                  │  │
        │ stopped           │  └──── fail ──┐     │  └── crash ──┐
        │                   │ stop          ▼     │ stop         ▼
      stopping ◀────────────┴──────────── error ◀─┘────────── (error)
        │   ▲                               │ ▲
        │   └────────────── stop ───────────┘ │
        └──────────────── fail ───────────────┘       error ── start ──▶ starting

- ``start``: the runner begins a start (legal from ``opened`` and from ``error``: a retry).
- ``started``: the process is up and answers on the bus.
- ``stop``: the runner begins a stop (SIGTERM, then SIGKILL after the grace period); from
  ``error`` it cleans up whatever is left.
- ``stopped``: nothing of the project runs any more.
- ``fail``: a start or a stop could not complete (the reason goes on the bootlog).
- ``crash``: the running (or starting) process exited on its own.

``delete`` and ``export`` are not transitions: they are allowed only in the *quiet* states
(:data:`QUIET`), where no process of the project exists.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from conat.platform import ProjectState

from ._errors import WrongState

__all__ = ["EVENTS", "QUIET", "STATES", "TRANSITIONS", "Event", "ProjectState", "check_quiet", "transition"]

Event = Literal["start", "started", "stop", "stopped", "fail", "crash"]

STATES: Final[tuple[ProjectState, ...]] = get_args(ProjectState)
EVENTS: Final[tuple[Event, ...]] = get_args(Event)

TRANSITIONS: Final[dict[tuple[ProjectState, Event], ProjectState]] = {
    ("opened", "start"): "starting",
    ("error", "start"): "starting",
    ("starting", "started"): "running",
    ("starting", "fail"): "error",
    ("starting", "crash"): "error",
    ("starting", "stop"): "stopping",
    ("running", "stop"): "stopping",
    ("running", "crash"): "error",
    ("error", "stop"): "stopping",
    ("stopping", "stopped"): "opened",
    ("stopping", "fail"): "error",
    # the process ending while it is being stopped is what a stop waits for, not a crash
    ("stopping", "crash"): "stopping",
}
"""``(state, event) -> next state``; a pair not listed is illegal."""

QUIET: Final[frozenset[ProjectState]] = frozenset({"opened", "error"})
"""States in which no process of the project may exist once cleanup is done (delete, export)."""


def transition(state: ProjectState, event: Event, project_id: str = "") -> ProjectState:
    """The state after ``event`` in ``state``.

    Raises:
        WrongState: ``event`` is illegal in ``state`` (nothing changes).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise WrongState(state, event, project_id) from None


def check_quiet(state: ProjectState, operation: str, project_id: str = "") -> None:
    """Refuse ``operation`` (``delete``, ``export``...) unless the project is quiet.

    Raises:
        WrongState: the project is starting, running or stopping.
    """
    if state not in QUIET:
        raise WrongState(state, operation, project_id)
