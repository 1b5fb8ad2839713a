"""Partitioned ownership of a keyed actor type: the bus splits the keys, one owner per partition.

One Python process is one interpreter, so a keyed type served by one process uses one core. To use
more, the key space is split into ``count`` partitions and each partition is served by exactly one
process. The split is nats-server's own, not a router of ours: a subject mapping on the bus,

    ``<pattern>``  ->  ``$CONAT.part.<count>.{{partition(<count>, <the pattern's * positions>)}}.<pattern>``

rewrites every message published to the type's subject, before the server routes it, into the
subject of its key's partition (FNV-1a of the key's tokens, modulo ``count``: :func:`partition_of`
computes the same number). The owner of partition ``i`` subscribes to
``$CONAT.part.<count>.<i>.<pattern>`` (:func:`partition_subject`) and sees the original subject again
(the runtime strips the prefix), so actors are written as if nothing were partitioned.

Guarantees, and what keeps them:

- **One owner per partition**: each partition subject is claimed like a whole type
  (:mod:`actors._ownership`): a second process for the same partition refuses to start
  (:class:`OwnedElsewhere`). A process may own several partitions.
- **A partition without an owner answers 503**: its subject has no subscriber, so nats-server
  answers "no responders" at once (:class:`conat.NoResponders`), and a caller that waits for interest
  retries until the partition's owner is back. Nothing is served twice, and nothing is lost that
  the owner acknowledged (an owner's state is its own: the persist service's files).
- **The bus and the processes agree on the split**: a partitioned start sends a probe through the
  mapping (a request with the :data:`PROBE_HEADER` to a key of each partition it owns) and refuses
  with :class:`PartitionsUnmapped` unless it comes back to a runtime serving that very partition:
  without the mapping, or with another ``count``, the process would otherwise wait for messages
  that never come. Every runtime answers probes (an unpartitioned one too), before its actors see
  anything.

Permissions: nats-server applies the mapping *before* it checks a publisher's permissions, so a
caller is checked on the partition subject: conat's grants let every principal publish the
partitioned twin of each subject it may publish (``$CONAT.part.*.*.<pattern>``,
:func:`subjects.partitioned_pattern`), and nothing else under ``$CONAT.part``. A caller could use
the twin to send a key to the wrong partition (``$CONAT.part.<n>.<j>.<subject>`` straight), so an
owner refuses (400) a message whose key is not of the partition it arrived on: it never serves a key
another partition owns. Subscribing to partition subjects needs a grant on them (the owning
processes have it; callers do not).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Final, final

import msgspec

from conat import Client, ConatError, Forbidden, NoResponders, Timeout
from subjects import PARTITION_PREFIX, validate_pattern

from ._errors import ActorDefinitionError, PartitionsUnmapped

__all__ = [
    "PARTITION_PREFIX",
    "PROBE_HEADER",
    "Partitions",
    "ProbeAnswer",
    "check_mapping",
    "wait_for_partitions",
    "partition_of",
    "partition_subject",
    "subject_mapping",
    "unmapped_subject",
]

PROBE_HEADER: Final = "X-Conat-Partition-Probe"
"""A request carrying it is answered by the runtime itself with a :class:`ProbeAnswer` (never seen
by an actor): a partitioned start checks the bus's mapping with it. Not a ``Conat-*`` name, which the
bus keeps to itself: anyone may send it, and learns only which partitions the runtime owns."""
_PREFIX_TOKENS: Final = PARTITION_PREFIX.count(".") + 3  # $CONAT . part . <count> . <index>
MAX_PARTITIONS: Final = 1024


@final
@dataclass(frozen=True, slots=True)
class Partitions:
    """How many partitions a keyed type's keys are split into, and which of them this process owns.

    Raises:
        ValueError: ``count`` is not in 1..:data:`MAX_PARTITIONS`, or ``owned`` is empty, repeats
            one, or names one out of range.
    """

    count: int
    owned: tuple[int, ...]

    def __post_init__(self) -> None:
        if (
            not isinstance(self.count, int)
            or isinstance(self.count, bool)
            or not 1 <= self.count <= MAX_PARTITIONS
        ):
            raise ValueError(f"partitions: count must be an int in 1..{MAX_PARTITIONS}, got {self.count!r}")
        owned = tuple(self.owned)
        if not owned or len(set(owned)) != len(owned):
            raise ValueError(f"partitions: owned must name distinct partitions, got {owned!r}")
        for index in owned:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.count:
                raise ValueError(f"partitions: {index!r} is not a partition of 0..{self.count - 1}")
        object.__setattr__(self, "owned", owned)

    @classmethod
    def one(cls, index: int, count: int) -> Partitions:
        """Partition ``index`` of ``count``."""
        return cls(count, (index,))

    @classmethod
    def parse(cls, text: str) -> Partitions:
        """Partition ``I`` of ``N`` from ``"I/N"`` (a command line's ``--partition I/N``).

        Raises:
            ValueError: ``text`` is not ``I/N`` with ``0 <= I < N``.
        """
        index, slash, count = text.partition("/")
        try:
            if not slash:
                raise ValueError("no '/'")
            return cls.one(int(index), int(count))
        except ValueError as e:
            raise ValueError(f"{text!r}: want I/N, a partition of N (0 <= I < N): {e}") from None

    def __str__(self) -> str:
        return f"{','.join(map(str, self.owned))} of {self.count}"


def _wildcards(pattern: str) -> list[int]:
    validate_pattern(pattern)
    tokens = pattern.split(".")
    positions = [i for i, t in enumerate(tokens) if t == "*"]
    if not positions:
        raise ActorDefinitionError(f"only a keyed pattern (with a '*') can be partitioned, not {pattern!r}")
    return positions


def partition_subject(pattern: str, count: int, index: int) -> str:
    """The subject the owner of partition ``index`` of ``count`` subscribes to for ``pattern``."""
    return f"{PARTITION_PREFIX}.{count}.{index}.{pattern}"


def subject_mapping(pattern: str, count: int) -> tuple[str, str]:
    """The nats-server mapping ``(source, destination)`` that splits ``pattern``'s keys ``count`` ways.

    Raises:
        ActorDefinitionError: ``pattern`` has no ``*`` (nothing to split on).
        InvalidSubject: ``pattern`` is not a subject pattern.
    """
    positions = _wildcards(pattern)
    tokens = pattern.split(".")
    dest = []
    for i, token in enumerate(tokens):
        dest.append(f"{{{{wildcard({positions.index(i) + 1})}}}}" if token == "*" else token)
    args = ",".join(str(n) for n in range(1, len(positions) + 1))
    return pattern, f"{PARTITION_PREFIX}.{count}.{{{{partition({count},{args})}}}}.{'.'.join(dest)}"


@functools.lru_cache(maxsize=4096)
def partition_of(key: str, count: int) -> int:
    """The partition nats-server maps ``key`` (its tokens, ``.``-joined) to: FNV-1a 32 of the
    tokens concatenated, modulo ``count``."""
    h = 0x811C9DC5
    for byte in key.replace(".", "").encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % count


def unmapped_subject(subject: str) -> str:
    """The subject a message was published to, from the partition subject it arrived on."""
    return subject.split(".", _PREFIX_TOKENS)[_PREFIX_TOKENS]


def split_partition_subject(subject: str) -> tuple[int, str]:
    """``(index, subject as published)`` of a message that arrived on a partition subject
    (``$CONAT.part.<count>.<index>.<subject>``: the owner subscribed to its count and index)."""
    parts = subject.split(".", _PREFIX_TOKENS)
    return int(parts[_PREFIX_TOKENS - 1]), parts[_PREFIX_TOKENS]


def probe_key(index: int, count: int, tokens: int = 1) -> str:
    """A key (of ``tokens`` tokens) that partition ``index`` of ``count`` owns: for a probe."""
    rest = ".p" * (tokens - 1)
    n = 0
    while partition_of(f"conat-probe-{n}{rest}", count) != index:
        n += 1
    return f"conat-probe-{n}{rest}"


class ProbeAnswer(msgspec.Struct, frozen=True):
    """A runtime's answer to a probe (JSON): who it is and which partitions of how many it owns
    (``count`` is ``None`` for a runtime that is not partitioned)."""

    instance: str
    count: int | None
    owned: list[int]


PROBE_TIMEOUT: Final = 2.0


async def check_mapping(
    client: Client, pattern: str, subject_for: object, parts: Partitions, instance: str
) -> None:
    """Check that the bus maps ``pattern`` into ``parts.count`` partitions and that a probe to a key
    of each owned partition reaches this process (``instance``), already subscribed.

    ``subject_for(key, tail)`` builds a concrete subject of the pattern (:meth:`ActorSpec.subject_for`).

    Raises:
        PartitionsUnmapped: a probe came back from nobody, or from a runtime that is not this one.
    """
    positions = _wildcards(pattern)
    tail = "probe" if pattern.endswith(">") else None
    for index in parts.owned:
        key = probe_key(index, parts.count, len(positions))
        subject = subject_for(key, tail)  # type: ignore[operator]
        try:
            reply = await client.request(
                subject, b"", headers={PROBE_HEADER: "1"}, timeout=PROBE_TIMEOUT, encoding="raw",
                wait_for_interest=False,
            )  # fmt: skip
            answer = msgspec.json.decode(reply.raw, type=ProbeAnswer)
        except Forbidden:
            return  # this principal may not publish there: nothing to check with (its callers can)
        except (NoResponders, Timeout):
            raise PartitionsUnmapped(pattern, parts.count, "nobody answered through the mapping") from None
        except (ConatError, msgspec.DecodeError, msgspec.ValidationError) as e:
            raise PartitionsUnmapped(pattern, parts.count, f"the probe failed: {e}") from None
        if answer.instance != instance or answer.count != parts.count or index not in answer.owned:
            raise PartitionsUnmapped(
                pattern, parts.count,
                f"a probe for partition {index} reached {answer.instance!r} serving "
                f"{'no partitions' if answer.count is None else f'{answer.owned} of {answer.count}'}",
            )  # fmt: skip
        await asyncio.sleep(0)


async def wait_for_partitions(
    client: Client, subject_for: object, pattern: str, count: int, timeout: float
) -> None:
    """Wait until every partition of ``pattern`` (split ``count`` ways) has an owner serving it:
    a probe through the mapping to a key of each partition is answered. For a supervisor of
    partitioned workers, before it says it is ready.

    Raises:
        Timeout: a partition still had no owner after ``timeout`` seconds.
        PartitionsUnmapped: a probe reached a runtime that does not own that partition of ``count``.
    """
    positions = _wildcards(pattern)
    tail = "probe" if pattern.endswith(">") else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for index in range(count):
        subject = subject_for(probe_key(index, count, len(positions)), tail)  # type: ignore[operator]
        reply = await client.request(
            subject, b"", headers={PROBE_HEADER: "1"}, timeout=max(0.1, deadline - loop.time()),
            encoding="raw", wait_for_interest=True,
        )  # fmt: skip
        answer = msgspec.json.decode(reply.raw, type=ProbeAnswer)
        if answer.count != count or index not in answer.owned:
            raise PartitionsUnmapped(
                pattern, count, f"partition {index} is served by {answer.owned} of {answer.count}"
            )
