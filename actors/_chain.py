"""The actor call chain: detecting calls that would deadlock (a turn waiting on its own mailbox).

A key runs one turn at a time, so a turn that calls its own key, directly or through other actors
(A → B → A), waits forever behind itself. Each turn records the chain of ``Name/key`` activations
that led to it in a context variable; :func:`actor_proxy` sends it in the ``Conat-Chain`` header;
the router refuses, before queueing, a message whose chain already contains the target key (code
508, "loop detected") or is deeper than :data:`MAX_DEPTH` (Dapr's default reentrancy depth).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final, Protocol

__all__ = ["CHAIN_HEADER", "MAX_DEPTH", "Turn", "chain_headers", "current_turn", "refusal"]

CHAIN_HEADER: Final = "Conat-Chain"
MAX_DEPTH: Final = 32
_SEPARATOR: Final = " "  # never inside a subject token, so never inside a key or an actor name

class Turn(Protocol):
    """What a running turn exposes for the chain: its own ``Name/key`` and the chain it came with."""

    ident: str
    incoming_chain: str | None


current_turn: ContextVar[Turn | None] = ContextVar("conat_actor_turn", default=None)
"""The activation whose task is running: set once when its task starts (each task has its own
context), so a turn costs an attribute store, and the chain is joined only when a call is made."""


def chain_headers() -> dict[str, str] | None:
    """Headers that carry the current turn's call chain (None outside any turn)."""
    turn = current_turn.get()
    if turn is None:
        return None
    incoming, ident = turn.incoming_chain, turn.ident
    return {CHAIN_HEADER: f"{incoming}{_SEPARATOR}{ident}" if incoming else ident}


def parse(value: str | None) -> tuple[str, ...]:
    return tuple(value.split(_SEPARATOR)) if value else ()


def refusal(chain: tuple[str, ...], target: str) -> str | None:
    """Why a call with ``chain`` must not be queued for ``target`` (None: it may)."""
    if target in chain:
        path = " -> ".join((*chain[chain.index(target) :], target))
        return f"reentrant call would deadlock: {path}"
    if len(chain) >= MAX_DEPTH:
        return f"call chain deeper than {MAX_DEPTH} actors: {' -> '.join(chain[:3])} -> ..."
    return None
