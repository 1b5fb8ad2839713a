"""Helpers for tests of code built on conat; not part of the runtime API.

- :class:`FakeClock`: time that moves only when the test says so (``await clock.advance(60)``). Pass
  it wherever conat takes a ``clock=`` (an ``ActorSystem``, a socket, persist's engine), to test
  keepalives, passivation, timers, reminders and backoff without sleeping.

Runtime code takes a :class:`conat.Clock` and defaults to :class:`conat.SystemClock`.
"""

from ._clock import FakeClock

__all__ = ["FakeClock"]
