"""auth: buses that only authorized clients can use (AUTH.md): the nats-server auth callout,
its responders, the audit log, revocation.

Layering: ``subjects`` (the policy) ← ``conat`` (keys, tokens, client credentials) ← ``actors`` ←
``auth`` ← ``host``, ``master``. We decide here; nats-server enforces on every message.
"""

from ._audit import AuditEntry as AuditEntry
from ._audit import AuditLog as AuditLog
from ._bus import AuthBus as AuthBus
from ._bus import callout_blocks as callout_blocks
from ._callout import MIN_CONNECTION_LIFETIME as MIN_CONNECTION_LIFETIME
from ._callout import AuthCallout as AuthCallout
from ._callout import Connections as Connections
from ._callout import Decider as Decider
from ._callout import Decision as Decision
from ._responder import REVOCATION_SUBJECT as REVOCATION_SUBJECT
from ._responder import AuthResponder as AuthResponder
from ._responder import Revocation as Revocation
from ._responder import RevocationNotice as RevocationNotice
from ._secrets import BusSecrets as BusSecrets
from ._store import AuthStore as AuthStore
from ._store import AuthStoreError as AuthStoreError

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuthBus",
    "AuthCallout",
    "AuthResponder",
    "AuthStore",
    "AuthStoreError",
    "BusSecrets",
    "Connections",
    "Decider",
    "Decision",
    "MIN_CONNECTION_LIFETIME",
    "REVOCATION_SUBJECT",
    "Revocation",
    "RevocationNotice",
    "callout_blocks",
]
