"""Helpers for tests of code built on conat; not part of the runtime API.

- :class:`FakeClock`: time that moves only when the test says so (``await clock.advance(60)``). Pass
  it wherever conat takes a ``clock=`` (an ``ActorSystem``, a socket, persist's engine), to test
  keepalives, passivation, timers, reminders and backoff without sleeping.

Runtime code takes a :class:`conat.Clock` and defaults to :class:`conat.SystemClock`.

- :class:`LocalCluster`: ``n`` nats-servers forming one cluster on loopback, returned once the mesh
  is complete; nodes can be killed and restarted (failover and fault tests).
"""

from ._clock import FakeClock
from ._local_cluster import LocalCluster

__all__ = ["FakeClock", "LocalCluster"]
