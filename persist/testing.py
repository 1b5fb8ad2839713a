"""Helpers for tests and benchmarks of code built on persist; not part of the runtime API.

- :class:`StreamModel`: the pure reference model of one stream (limits, TTL, dedup, compare-and-set),
  the oracle the engine is checked against: a test runs the same operations on both and compares.
- :data:`MESSAGES_TABLE`: the engine's message table, so a baseline (raw sqlite3 in ``bench``) writes
  rows of the same layout as the engine.
"""

from ._model import StreamModel
from ._sql import MESSAGES_TABLE

__all__ = ["MESSAGES_TABLE", "StreamModel"]
