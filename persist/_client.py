"""Direct clients of the persist service: :class:`AStream` and :class:`AKV` (no local cache).

Every call is one request to ``persist.<scope>.api`` (a page of ``get_all`` or of the changefeed is
one request too). Calls that are safe to repeat are retried, with exponential backoff and jitter
(:data:`CALL_BACKOFF`), while the service is unreachable (no responders, a timeout, a 503 from a stopping
service) until the call's ``timeout``: reads always, and writes and deletes because each carries a
msg-id (one is made up if the caller gave none), so one retried after a crash of the service is
answered with its original result instead of being applied twice (a retried delete reports what
it removed the first time).

A refusal raises the same :class:`~persist.PersistError` subclass the engine raised, with its fields
(``Rejected.limit``, ``WrongLastSequence.actual``...).

**Long polls and reconnects.** A changefeed page waits in the service (``wait`` s) for a change. If
the connection drops meanwhile, its reply can be lost: the service answers while this client is not
connected yet (core NATS does not keep it), and the poll would only be retried when its attempt
times out (``wait`` + 5 s: a follower stalled ~15 s after every broker restart). So a waiting read
is re-issued as soon as the client is connected again (:class:`_Reconnects`), and one started while
the client is disconnected waits for the reconnect instead of a blind backoff: a follower's lag
after an outage is the outage plus a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final, TypeVar, final

import msgspec

from conat import (
    BUSY,
    UNAVAILABLE,
    Backoff,
    Client,
    ClientState,
    Message,
    NoResponders,
    RemoteError,
    Timeout,
    get_codec,
    rebuild_error,
    retry,
)

from ._config import StreamConfig
from ._engine import ChangePage, StoredMessage, Write
from ._errors import BadRequest, PersistError
from ._model import DeleteResult, Inventory, SetResult
from ._wire import (
    DEFAULT_PAGE_BYTES,
    DEFAULT_PAGE_MSGS,
    MAX_INVENTORY,
    MAX_WAIT,
    ConfigOp,
    DeleteOp,
    GetOp,
    InventoryOp,
    KeysOp,
    ReadOp,
    Request,
    ResetOp,
    ResetResult,
    SetManyOp,
    SetOp,
    StreamInventory,
    api_subject,
)

__all__ = ["AKV", "AStream", "Change", "list_streams"]

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_FEED_WAIT: Final = 10.0
_ATTEMPT_TIMEOUT: Final = 5.0
_AFTER_EVERYTHING: Final = 2**63 - 1
CALL_BACKOFF: Final = Backoff(initial=0.02, maximum=1.0, jitter=1.0)
"""Between the tries of a call while the service is unreachable (doubling, up to twice as long at
random, so callers that lost the service together do not come back together)."""

_encoder: Final = msgspec.msgpack.Encoder()


def _transient(error: BaseException) -> bool:
    """Whether a call may be repeated: the service was unreachable or stopping."""
    if isinstance(error, NoResponders | Timeout):
        return True
    return isinstance(error, RemoteError) and error.code in (UNAVAILABLE, BUSY)


@final
class _Reconnects:
    """The reconnects of one client, as a future resolved at the next one (then replaced)."""

    __slots__ = ("_next", "_state")

    def __init__(self, client: Client) -> None:
        self._state = client.state
        self._next: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client.on_state_change(self._changed)

    def next(self) -> asyncio.Future[None]:
        """Resolved when the client is connected again after it was not (shared: never cancel it)."""
        return self._next

    def _changed(self, state: ClientState) -> None:
        was, self._state = self._state, state
        if state is ClientState.CONNECTED and was is not ClientState.CONNECTED:
            done, self._next = self._next, asyncio.get_running_loop().create_future()
            if not done.done():
                done.set_result(None)


_reconnects: weakref.WeakKeyDictionary[Client, _Reconnects] = weakref.WeakKeyDictionary()


def _reconnects_of(client: Client) -> _Reconnects:
    found = _reconnects.get(client)
    if found is None:
        found = _reconnects[client] = _Reconnects(client)
    return found


class _Caller:
    """Sends requests of one scope and turns error replies into typed errors, with retries."""

    def __init__(self, client: Client, scope: str, timeout: float, subject: str | None = None) -> None:
        self.client = client
        self.scope = scope
        self.subject = subject if subject is not None else api_subject(scope)
        self.timeout = timeout

    async def call(self, request: Request | InventoryOp, result: type[T], *, wait: float = 0.0) -> T:
        payload = _encoder.encode(request)
        attempt_timeout = wait + _ATTEMPT_TIMEOUT
        attempt = self._attempt if wait <= 0 else self._waiting_attempt
        deadline = asyncio.get_running_loop().time() + max(self.timeout, attempt_timeout)
        reply = await retry(
            lambda: attempt(payload, attempt_timeout),
            backoff=CALL_BACKOFF,
            retry_if=_transient,
            deadline=deadline,
        )
        return msgspec.msgpack.decode(reply.raw, type=result)

    async def _waiting_attempt(self, payload: bytes, timeout: float) -> Message:
        """An attempt of a long poll, re-issued at once whenever the client reconnects meanwhile
        (its reply may have been lost), and not sent before the client is connected (module docstring)."""
        reconnects = _reconnects_of(self.client)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            reconnected = reconnects.next()
            if self.client.state is ClientState.RECONNECTING:  # sent now, it could only be lost
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reconnected), deadline - loop.time())
                if not reconnected.done():
                    raise Timeout(self.subject, timeout)
                continue
            attempt = asyncio.ensure_future(self._attempt(payload, timeout))
            racing: set[asyncio.Future[Any]] = {attempt, reconnected}
            try:
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not attempt.done():
                    attempt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await attempt
            if attempt.done() and not attempt.cancelled():
                return attempt.result()
            # reconnected while it waited: send it again (the service answers the same cursor)

    async def _attempt(self, payload: bytes, timeout: float) -> Message:
        """One request; a refusal raises the persist error it stands for (registered in conat)."""
        return await self.client.request(self.subject, payload, timeout=timeout, encoding="raw")


@final
class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What a changefeed page brought: new messages (in seq order) and removed seqs.

    Attributes:
        messages: new messages; a keyed one replaces the key's previous message.
        deletes: ``(low, high)`` ranges of removed seqs.
        resync: the feed could not list every removal since the last page (the consumer fell
            behind the service's delete log, or the stream was re-created): anything held from
            before may be stale, reload it (``get_all``).
    """

    messages: list[StoredMessage]
    deletes: list[tuple[int, int]]
    resync: bool = False


class AStream:
    """A stream of a persist scope, accessed directly (every call goes to the service).

    Args:
        client: the connection.
        scope: the scope token (``project-<uuid>``, ``account-<uuid>``, ``host-<uuid>``, ``hub``).
        name: the stream's name in the scope (``"chat"``, ``"logs/build"``).
        config: the config the stream gets if a write of this client creates it.
        timeout: how long a call may keep retrying while the service is unreachable (s).
        encoding: the codec of values (``"msgpack"``, ``"json"``, ``"raw"``).
        subject: where requests go, if not ``persist.<scope>.api`` (a bootlog's own subject).
    """

    def __init__(
        self,
        client: Client,
        scope: str,
        name: str,
        *,
        config: StreamConfig | Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        encoding: str = "msgpack",
        subject: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise BadRequest("stream", f"name must be a non-empty string, not {name!r}")
        self.name = name
        self.scope = scope
        self._caller = _Caller(client, scope, timeout, subject)
        self._ids = uuid.uuid4().hex
        self._counter = itertools.count(1)
        self._codec = get_codec(encoding)
        self.encoding = self._codec.name
        self._config: dict[str, Any] | None = (
            msgspec.to_builtins(config)
            if isinstance(config, StreamConfig)
            else dict(config)
            if config
            else None
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scope!r}, {self.name!r})"

    def _next_msg_id(self) -> str:
        """A msg-id no other write shares: this instance's random prefix and a counter."""
        return f"{self._ids}-{next(self._counter)}"

    # ---- writes ----------------------------------------------------------------------------------

    async def publish(
        self,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
        msg_id: str | None = None,
        previous_seq: int | None = None,
    ) -> SetResult:
        """Append ``value`` (encoded with the stream's codec); return once it is committed.

        Raises:
            Rejected: a limit refused it. WrongLastSequence: ``previous_seq`` did not match.
        """
        op = SetOp(
            stream=self.name,
            payload=self._codec.encode(value),
            key=key,
            headers=dict(headers) if headers else None,
            encoding=self.encoding,
            ttl=ttl,
            msg_id=msg_id if msg_id is not None else self._next_msg_id(),
            previous_seq=previous_seq,
            config=self._config,
        )
        return await self._caller.call(op, SetResult)

    async def publish_many(self, writes: Iterable[Write]) -> list[SetResult | PersistError]:
        """Write several messages in one transaction (payloads already encoded; see :class:`Write`).

        Returns:
            per write, its result or the error that refused it (the others are unaffected).
        """
        batch = [
            w if w.msg_id is not None else msgspec.structs.replace(w, msg_id=self._next_msg_id())
            for w in writes
        ]
        raw = await self._caller.call(
            SetManyOp(stream=self.name, writes=batch, config=self._config), list[dict[str, Any]]
        )
        return [_set_many_result(r) for r in raw]

    async def delete(
        self,
        *,
        seq: int | None = None,
        seqs: Iterable[int] | None = None,
        up_to: int | None = None,
        key: str | None = None,
        msg_id: str | None = None,
    ) -> DeleteResult:
        """Delete by exactly one of ``seq``, ``seqs``, every seq ``<= up_to``, or ``key``.

        Carries a msg-id (made up if none is given) like a write, so a delete retried after its
        reply was lost reports what the first attempt removed, not an empty result.
        """
        op = DeleteOp(
            stream=self.name,
            seq=seq,
            seqs=list(seqs) if seqs is not None else None,
            up_to=up_to,
            key=key,
            msg_id=msg_id if msg_id is not None else self._next_msg_id(),
        )
        return await self._caller.call(op, DeleteResult)

    async def reset(self, *, restore: bool = False) -> ResetResult:
        """Reset this stream after it was found corrupt: an operator's act.

        A corrupt stream is moved aside and then refused (every call raises
        :class:`~persist.Corrupt`) until it is reset: it starts again empty, or with ``restore`` from
        its archive copy; either way with a new stream id, so changefeeds and caches reload.

        Raises:
            BadRequest: the stream is not quarantined (a sound stream cannot be reset).
            NotFound: ``restore`` and the stream has no archive.
        """
        return await self._caller.call(ResetOp(stream=self.name, restore=restore), ResetResult)

    async def config(self, changes: Mapping[str, Any] | None = None) -> StreamConfig:
        """The stream's config; with ``changes``, change it first (limits apply at once)."""
        op = ConfigOp(stream=self.name, changes=dict(changes) if changes is not None else None)
        return await self._caller.call(op, StreamConfig)

    # ---- reads -----------------------------------------------------------------------------------

    async def get(self, *, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        """The live message ``seq`` or of ``key`` (``message.value()`` decodes it), or ``None``."""
        return await self._caller.call(GetOp(stream=self.name, seq=seq, key=key), StoredMessage | None)  # type: ignore[arg-type]

    async def keys(self) -> list[str]:
        """Every key with a live message, sorted (fetched in pages the service bounds)."""
        out: list[str] = []
        after: str | None = None
        while True:
            page = await self._caller.call(KeysOp(stream=self.name, after=after), list[str])
            out.extend(page)
            if not page:
                return out
            after = page[-1]

    async def get_all(
        self, from_seq: int = 0, *, max_msgs: int = DEFAULT_PAGE_MSGS, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> AsyncIterator[list[StoredMessage]]:
        """Every live message with ``seq >= from_seq``, in seq order, in batches (one request each).

        The next batch is fetched while the caller handles the current one.
        """
        after = max(from_seq - 1, 0)
        fetch = asyncio.ensure_future(self._page(after, None, None, max_msgs, max_bytes, 0.0))
        try:
            while True:
                page = await fetch
                if not page.messages:
                    return
                after = page.messages[-1].seq
                fetch = asyncio.ensure_future(self._page(after, None, None, max_msgs, max_bytes, 0.0))
                yield page.messages
        finally:
            fetch.cancel()

    async def changefeed(
        self,
        after_seq: int = 0,
        *,
        wait: float = DEFAULT_FEED_WAIT,
        max_msgs: int = DEFAULT_PAGE_MSGS,
        max_bytes: int = DEFAULT_PAGE_BYTES,
        deletes: bool = True,
    ) -> AsyncIterator[Change]:
        """History after ``after_seq``, then live changes, joined with no gap and no duplicate.

        Each page is a long poll from the feed's own cursor, so a restart of the service (or of
        the bus) only delays the next :class:`Change`; it never loses or repeats one. Runs until
        the caller stops iterating. If the stream is deleted and created again, the feed yields a
        ``Change`` with ``resync`` set and no messages, then starts over from the new stream's
        first message.

        Args:
            deletes: also report removals (from the first page on) in :attr:`Change.deletes`.
        """
        wait = min(max(wait, 0.001), MAX_WAIT)
        after_delete: int | None = None
        stream_id: str | None = None
        while True:
            page = await self._page(after_seq, after_delete, stream_id, max_msgs, max_bytes, wait)
            if stream_id is not None and page.stream_id and page.stream_id != stream_id:
                # the stream was re-created: its seqs start again, so does the feed (after this news)
                after_seq, after_delete, stream_id = 0, None, None
                yield Change(messages=[], deletes=[], resync=True)
                continue
            if page.stream_id:
                if deletes:
                    after_delete = page.delete_cursor
                stream_id = page.stream_id
            if page.messages:
                after_seq = page.messages[-1].seq
            if page.messages or page.deletes or page.resync:
                yield Change(messages=page.messages, deletes=page.deletes, resync=page.resync)

    async def last_seq(self) -> int:
        """The last seq ever assigned (0 for a stream never written): follow from here for only
        what comes next."""
        page = await self._page(_AFTER_EVERYTHING, None, None, 1, 1, 0.0)
        return page.last_seq

    async def inventory(self) -> Inventory | None:
        """Count, bytes, first and last seq of this stream (``None`` if it does not exist).

        Raises:
            Corrupt, StorageError: the stream cannot be read (a corrupt one is refused until reset).
        """
        for entry in await list_streams(self._caller.client, self.scope, prefix=self.name, limit=1):
            if entry.name != self.name:
                break
            if entry.error is not None:
                error = rebuild_error(entry.error, entry.message or "", data=entry.error_data)
                raise error if isinstance(error, PersistError) else PersistError(entry.message or "")
            return entry.inventory
        return None

    async def read_page(
        self,
        after_seq: int = 0,
        *,
        after_delete: int | None = None,
        stream_id: str | None = None,
        max_msgs: int = DEFAULT_PAGE_MSGS,
        max_bytes: int = DEFAULT_PAGE_BYTES,
        wait: float = 0.0,
    ) -> ChangePage:
        """One page of changes after a cursor (what :meth:`changefeed` and :meth:`get_all` loop on).

        For consumers that keep their own cursor ``(after_seq, after_delete, stream_id)`` across
        restarts of their own: pass the previous page's ``delete_cursor`` and ``stream_id``, and
        no delete is missed between pages. With ``wait`` > 0 the service holds the request until
        there is something to report or ``wait`` s pass.
        """
        return await self._page(after_seq, after_delete, stream_id, max_msgs, max_bytes, wait)

    async def _page(
        self,
        after_seq: int,
        after_delete: int | None,
        stream_id: str | None,
        max_msgs: int,
        max_bytes: int,
        wait: float,
    ) -> ChangePage:
        op = ReadOp(
            stream=self.name,
            after_seq=after_seq,
            after_delete=after_delete,
            stream_id=stream_id,
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            wait=wait,
            config=self._config if wait > 0 else None,
        )
        return await self._caller.call(op, ChangePage, wait=wait)


class AKV:
    """A key-value store of a persist scope (a stream where a key keeps only its last value),
    accessed directly. Values are encoded with the store's codec."""

    def __init__(
        self,
        client: Client,
        scope: str,
        name: str,
        *,
        config: StreamConfig | Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        encoding: str = "msgpack",
    ) -> None:
        self.stream = AStream(client, scope, name, config=config, timeout=timeout, encoding=encoding)

    def __repr__(self) -> str:
        return f"AKV({self.stream.scope!r}, {self.stream.name!r})"

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` if it has none."""
        message = await self.stream.get(key=key)
        return default if message is None else message.value()

    async def get_message(self, key: str) -> StoredMessage | None:
        """The stored message of ``key`` (its seq is what :meth:`set` compares with ``previous_seq``)."""
        return await self.stream.get(key=key)

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, previous_seq: int | None = None
    ) -> SetResult:
        """Set ``key``. With ``previous_seq``, only if the key's current seq is that (0: absent)."""
        return await self.stream.publish(value, key=key, ttl=ttl, previous_seq=previous_seq)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it had a value."""
        return bool((await self.stream.delete(key=key)).seqs)

    async def keys(self) -> list[str]:
        return await self.stream.keys()

    async def items(self) -> dict[str, Any]:
        """Every key with its value."""
        out: dict[str, Any] = {}
        async for batch in self.stream.get_all():
            for message in batch:
                if message.key is not None:
                    out[message.key] = message.value()
        return out


async def list_streams(
    client: Client, scope: str, *, prefix: str = "", limit: int = 10_000, timeout: float = DEFAULT_TIMEOUT
) -> list[StreamInventory]:
    """The streams of ``scope`` whose name starts with ``prefix`` (at most ``limit``), in name order,
    with their counts and limits. One that cannot be read is listed with its ``error``.

    Asks for pages of at most :data:`persist._wire.MAX_INVENTORY` (the service's cap).
    """
    caller = _Caller(client, scope, timeout)
    out: list[StreamInventory] = []
    after: str | None = None
    while len(out) < limit:
        want = min(limit - len(out), MAX_INVENTORY)
        page = await caller.call(InventoryOp(prefix=prefix, after=after, limit=want), list[StreamInventory])
        out.extend(page[:want])
        if len(page) < want:
            break
        after = page[-1].name
    return out


def _set_many_result(raw: dict[str, Any]) -> SetResult | PersistError:
    if "error" not in raw:
        return msgspec.convert(raw, SetResult)
    error = rebuild_error(raw["error"], raw.get("message", ""), data=raw.get("data"))
    return error if isinstance(error, PersistError) else PersistError(str(error))
