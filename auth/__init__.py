"""auth: buses that only authorized clients can use (AUTH.md): the nats-server auth callout,
its responder actor, the audit log, revocation.

Layering: ``subjects`` (the policy) ← ``conat`` (keys, tokens, client credentials) ← ``actors`` ←
``auth`` ← ``host``, ``master``. We decide here; nats-server enforces on every message.
"""

from ._audit import AuditEntry as AuditEntry
from ._audit import AuditLog as AuditLog
from ._bus import AuthBus as AuthBus
from ._bus import BusSecrets as BusSecrets
from ._bus import callout_blocks as callout_blocks
from ._callout import AuthCallout as AuthCallout
from ._callout import Connections as Connections
from ._callout import Decider as Decider
from ._callout import Decision as Decision
from ._callout import Revocations as Revocations

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuthBus",
    "AuthCallout",
    "BusSecrets",
    "Connections",
    "Decider",
    "Decision",
    "Revocations",
    "callout_blocks",
]
