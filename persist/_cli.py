"""``conat stream | kv | persist``: persisted streams and KV stores from a shell, and the persist service.

Registered with the ``conat`` CLI through the ``conat.commands`` entry point group (like ``conat run``),
so conat never imports persist. ``conat persist serve`` lives in :mod:`persist._serve_cli` (re-exported
here for its entry point); persist's part in ``conat up`` is :mod:`persist._up`.

Arguments: SCOPE is a scope token (``hub``, ``project-<uuid>``, ``account-<uuid>``, ``host-<uuid>``),
NAME a stream's (or KV store's) name in it (``chat``, ``logs/build``). Every command is a client of
the persist service on the bus: ``conat up`` runs one, ``conat persist serve`` runs one alone.

Output: human lines on stdout, or with ``--json`` one JSON object per line; status notes on stderr.
A message is ``{"seq", "time", "key", "value", "encoding", "headers", "ttl"}`` (``value_base64``
instead of ``value`` for bytes that are not UTF-8 text; ``time`` in seconds since the epoch).

Exit codes (the CLI's table): 0 ok (also Ctrl-C stopping ``tail``, ``watch``, ``serve``); 1 bad
input (scope, name, options) or nothing found (a missing key or seq: ``(code not-found)``); 2 the
service refused (``reject``, ``wrong-last-sequence``...: a remote error, as for ``conat req``); 3
timeout; 4 no persist service answered within ``--timeout``; 6 cannot connect; 7 ``persist serve``
gave up after repeated crashes (so a supervisor starts a fresh one).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import sys
import traceback
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import click
import msgspec

from conat import InvalidSubject, PayloadError
from conat.cli.plugin import (
    EXIT_REMOTE,
    EXIT_USAGE,
    Options,
    Printer,
    common_options,
    format_value,
    read_data,
    run,
    stop_on_signals,
    to_json,
    until_stopped,
)
from subjects import parse_scope

from ._client import AKV, AStream, list_streams
from ._config import StreamConfig
from ._engine import StoredMessage
from ._errors import NotFound, PersistError
from ._model import SetResult
from ._placement import StoragePath
from ._serve_cli import SUBJECT, persist_group
from ._wire import ResetResult, StreamInventory

__all__ = ["SUBJECT", "kv", "message_fields", "persist_group", "stream"]

T = TypeVar("T")

_DEFAULTS: Final[dict[str, Any]] = msgspec.to_builtins(StreamConfig())


# ---- arguments, errors, output ----------------------------------------------------------------


def _scope(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A scope token; anything else is a usage error (exit 1) naming the accepted forms."""
    try:
        parse_scope(value)
    except InvalidSubject:
        raise click.BadParameter(
            f"{value!r} is not a scope: use hub, project-<uuid>, account-<uuid> or host-<uuid>"
        ) from None
    return value


_scope_arg: Final = click.argument("scope", callback=_scope)
_name_arg: Final = click.argument("name")
_timeout_option: Final = click.option(
    "--timeout",
    "-t",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds a call keeps retrying while no persist service answers.",
)


def _run(opts: Options, main: Coroutine[Any, Any, T]) -> T:
    """``run(main)``, where a refusal by the service exits 2 (a remote error, as for ``conat req``).

    ``not-found`` exits 1, as for a missing key, whether the CLI found it missing or the service
    answered so (the service's arrives as a :class:`NotFound` that is also a ``RemoteError``).
    """
    try:
        return run(main)
    except PersistError as e:
        if opts.debug:
            traceback.print_exception(e, file=sys.stderr)
        click.echo(f"conat: error: {e} (code {e.code})", err=True)
        raise click.exceptions.Exit(EXIT_USAGE if isinstance(e, NotFound) else EXIT_REMOTE) from None


def _follow(opts: Options, main: Coroutine[Any, Any, None]) -> None:
    """Run a command that follows a feed until it ends, Ctrl-C or SIGTERM (both exit 0)."""

    async def body() -> None:
        with stop_on_signals() as stop:
            await until_stopped(stop, main)

    try:
        _run(opts, body())
    except KeyboardInterrupt:
        pass


def _iso(t: float) -> str:
    moment = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _value(message: StoredMessage) -> Any:
    """The decoded value; the payload bytes if it does not decode with its encoding."""
    try:
        return message.value()
    except PayloadError:
        return message.payload


def _value_fields(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        try:
            return {"value": value.decode()}
        except UnicodeDecodeError:
            return {"value_base64": base64.b64encode(value).decode()}
    return {"value": value}


def message_fields(message: StoredMessage) -> dict[str, Any]:
    """The JSON object of one stored message (module docstring)."""
    return {
        "seq": message.seq,
        "time": message.time,
        "key": message.key,
        **_value_fields(_value(message)),
        "encoding": message.encoding,
        "headers": message.headers,
        "ttl": message.ttl,
    }


def _print_message(out: Printer, message: StoredMessage, **extra: Any) -> None:
    key = message.key if message.key is not None else "-"
    text = f"#{message.seq}  {_iso(message.time)}  {key}  {format_value(_value(message))}"
    lines = [text, *(f"    {k}: {v}" for k, v in message.headers.items())]
    out.event("\n".join(lines), **extra, **message_fields(message))


@dataclass(frozen=True)
class _Target:
    """The stream (or KV store) a command works on, and how to reach it."""

    opts: Options
    scope: str
    name: str
    timeout: float

    def __str__(self) -> str:
        return f"{self.scope}/{self.name}"

    @contextlib.asynccontextmanager
    async def stream(self, **kwargs: Any) -> AsyncIterator[AStream]:
        async with await self.opts.connect("conat-cli-persist") as client:
            yield AStream(client, self.scope, self.name, timeout=self.timeout, **kwargs)

    @contextlib.asynccontextmanager
    async def kv(self, **kwargs: Any) -> AsyncIterator[AKV]:
        async with await self.opts.connect("conat-cli-persist") as client:
            yield AKV(client, self.scope, self.name, timeout=self.timeout, **kwargs)


def _target(opts: Options, scope: str, name: str, timeout: float) -> _Target:
    """The target, its name refused here if bad (exit 1, ``bad-path``) rather than after a round trip."""
    kind, ident = parse_scope(scope)
    StoragePath.of(kind, ident, name)
    return _Target(opts, scope, name, timeout)


# ---- conat stream ------------------------------------------------------------------------------


@click.group("stream", short_help="List, read and follow persisted streams.")
def stream() -> None:
    """Persisted streams: list a scope's streams, read messages, follow the changefeed.

    SCOPE: hub, project-<uuid>, account-<uuid> or host-<uuid>. Needs a persist service on the bus
    (`conat up` or `conat persist serve`).
    """


@stream.command("ls", short_help="List the streams of a scope.")
@_scope_arg
@click.option("--prefix", default="", metavar="P", help="Only streams whose name starts with P.")
@_timeout_option
@common_options
@click.pass_obj
def stream_ls(opts: Options, scope: str, prefix: str, timeout: float) -> None:
    """List the streams of SCOPE: name, count, bytes, first and last seq, and limits.

    LIMITS shows the config fields that differ from the defaults. A stream that cannot be read is
    listed with its error instead (a corrupt one until it is reset: conat stream reset). With
    --json, one object per stream: name, count, bytes, first_seq, last_seq and the whole config, or
    name, error (the code) and message.
    """

    async def ls() -> list[StreamInventory]:
        async with await opts.connect("conat-cli-persist") as client:
            return await list_streams(client, scope, prefix=prefix, timeout=timeout)

    entries = _run(opts, ls())
    out = Printer(opts.json)
    if opts.json:
        for e in entries:
            if e.inventory is None:
                out.event("", name=e.name, error=e.error, message=e.message)
            else:
                out.event("", name=e.name, **msgspec.to_builtins(e.inventory), config=e.config)
    elif not entries:
        out.note(f"no streams in {scope}" + (f" starting with {prefix!r}" if prefix else ""))
    else:
        out.event(_table(entries))


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else to_json(value)


def _limits(config: dict[str, Any]) -> str:
    changed = [f"{k}={_show(v)}" for k, v in config.items() if _DEFAULTS.get(k) != v]
    return " ".join(changed) or "-"


def _table(entries: list[StreamInventory]) -> str:
    header = ("NAME", "COUNT", "BYTES", "FIRST", "LAST", "LIMITS")
    rows = [
        (e.name, *(str(n) for n in msgspec.structs.astuple(e.inventory)), _limits(e.config or {}))
        if e.inventory is not None
        else (e.name, "-", "-", "-", "-", f"{e.error}: {e.message}")
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:-1], widths[1:], strict=True))]
        return "  ".join([*cells, row[-1]])

    return "\n".join(fmt(r) for r in [header, *rows])


@stream.command("get", short_help="Print messages of a stream.")
@_scope_arg
@_name_arg
@click.option("--seq", type=click.IntRange(min=1), help="Only the message SEQ.")
@click.option("--key", help="Only the message of key K.", metavar="K")
@click.option("--from", "from_seq", type=click.IntRange(min=1), metavar="SEQ", help="Messages from SEQ on.")
@_timeout_option
@common_options
@click.pass_obj
def stream_get(
    opts: Options,
    scope: str,
    name: str,
    seq: int | None,
    key: str | None,
    from_seq: int | None,
    timeout: float,
) -> None:
    """Print the messages of stream NAME: all of them, --from SEQ on, one --seq, or one --key.

    Each line: seq, time (UTC), key (- if none) and the value decoded (strings as-is, other values
    as JSON). With --json, one object per message. A missing stream, --seq or --key exits 1.
    """
    if sum(x is not None for x in (seq, key, from_seq)) > 1:
        raise click.UsageError("--seq, --key and --from exclude each other")
    target = _target(opts, scope, name, timeout)
    _run(opts, _get(target, Printer(opts.json), seq, key, from_seq or 1))


async def _get(target: _Target, out: Printer, seq: int | None, key: str | None, from_seq: int) -> None:
    async with target.stream() as s:
        try:
            missing = await s.inventory() is None
        except PersistError:  # it exists but cannot be listed: the read below says why (and a
            missing = False  # corrupt file is moved aside by that first real use)
        if missing:  # say so, rather than print nothing as for an empty stream
            raise NotFound(f"stream {target}")
        if seq is not None or key is not None:
            message = await s.get(seq=seq, key=key)
            if message is None:
                what = f"seq {seq}" if seq is not None else f"key {key!r}"
                raise NotFound(f"{what} in stream {target}")
            _print_message(out, message)
            return
        async for batch in s.get_all(from_seq):
            for message in batch:
                _print_message(out, message)


@stream.command("tail", short_help="Follow a stream's changefeed.")
@_scope_arg
@_name_arg
@click.option(
    "--from",
    "from_seq",
    type=click.IntRange(min=1),
    metavar="SEQ",
    help="First print the history from SEQ on (default: only new messages).",
)
@click.option("--count", "-c", type=click.IntRange(min=1), help="Exit after N messages.")
@_timeout_option
@common_options
@click.pass_obj
def stream_tail(
    opts: Options, scope: str, name: str, from_seq: int | None, count: int | None, timeout: float
) -> None:
    """Print new messages of stream NAME as they are written, until Ctrl-C or --count messages.

    History and live messages come through one changefeed cursor: no gap, no duplicate. Deletions
    (explicit, expiry, limits) are printed too, as 'deleted #a..#b' (with --json:
    {"event": "delete", "first_seq", "last_seq"}); messages have "event": "message". A stream
    that does not exist yet is created empty, with the default config, by the first wait.
    """
    target = _target(opts, scope, name, timeout)
    _follow(opts, _tail(target, Printer(opts.json), from_seq, count))


async def _tail(target: _Target, out: Printer, from_seq: int | None, count: int | None) -> None:
    async with target.stream() as s:
        if from_seq is None:
            inventory = await s.inventory()
            after = inventory.last_seq if inventory is not None else 0
        else:
            after = from_seq - 1
        out.note(f"following stream {target} after seq {after} (Ctrl-C stops)")
        n = 0
        async for change in s.changefeed(after):
            if change.resync:
                out.note("the feed resynced: some deletions may not be listed")
            for low, high in change.deletes:  # before the page's messages: they are newer
                shown = f"#{low}" if low == high else f"#{low}..#{high}"
                out.event(f"deleted {shown}", event="delete", first_seq=low, last_seq=high)
            for message in change.messages:
                _print_message(out, message, event="message")
                n += 1
                if count is not None and n >= count:
                    return


@stream.command("reset", short_help="Reset a stream found corrupt (start again empty, or --restore).")
@_scope_arg
@_name_arg
@click.option("--restore", is_flag=True, help="Restore its archive copy instead of starting empty.")
@_timeout_option
@common_options
@click.pass_obj
def stream_reset(opts: Options, scope: str, name: str, restore: bool, timeout: float) -> None:
    """Reset stream NAME after it was found corrupt: an operator's decision.

    A corrupt stream is moved aside (never deleted) and then refused with 'corrupt' until it is
    reset. Without --restore it starts again empty; with --restore its archive copy (see
    CONAT_SYNC_ARCHIVE) is put back. Either way its consumers reload. Whatever was at its name is
    moved aside too. A stream that is not corrupt is refused (exit 2, code bad-request).
    """
    target = _target(opts, scope, name, timeout)

    async def reset() -> ResetResult:
        async with target.stream() as s:
            return await s.reset(restore=restore)

    result = _run(opts, reset())
    how = "restored from its archive" if result.restored else "it starts again empty"
    moved = f" (moved aside: {', '.join(result.moved_aside)})" if result.moved_aside else ""
    Printer(opts.json).event(
        f"reset stream {target}: {how}{moved}", event="reset", scope=scope, name=name,
        restored=result.restored, moved_aside=result.moved_aside,
    )  # fmt: skip


# ---- conat kv ----------------------------------------------------------------------------------


@click.group("kv", short_help="Get, set, delete and watch keys of a KV store.")
def kv() -> None:
    """KV stores: a stream where each key keeps only its last value.

    SCOPE: hub, project-<uuid>, account-<uuid> or host-<uuid>. Needs a persist service on the bus
    (`conat up` or `conat persist serve`).
    """


@kv.command("get", short_help="Print the value of a key.")
@_scope_arg
@_name_arg
@click.argument("key")
@_timeout_option
@common_options
@click.pass_obj
def kv_get(opts: Options, scope: str, name: str, key: str, timeout: float) -> None:
    """Print the value of KEY in KV store NAME (strings as-is, other values as JSON).

    With --json: {"key", "value", "seq", "time", ...}. A missing key exits 1.
    """
    target = _target(opts, scope, name, timeout)

    async def get() -> StoredMessage:
        async with target.kv() as store:
            message = await store.get_message(key)
        if message is None:
            raise NotFound(f"key {key!r} in kv {target}")
        return message

    message = _run(opts, get())
    Printer(opts.json).event(format_value(_value(message)), **message_fields(message))


@kv.command("put", short_help="Set a key.")
@_scope_arg
@_name_arg
@click.argument("key")
@click.argument("value", required=False)
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), help="Seconds the value lives.")
@click.option("--json-value", is_flag=True, help="Parse VALUE as JSON (default: it is a string).")
@_timeout_option
@common_options
@click.pass_obj
def kv_put(
    opts: Options,
    scope: str,
    name: str,
    key: str,
    value: str | None,
    ttl: float | None,
    json_value: bool,
    timeout: float,
) -> None:
    """Set KEY to VALUE in KV store NAME (created if needed) and print its seq once committed.

    VALUE omitted or '-': read it from stdin (as `conat pub` does).

    --ttl needs a store that allows per-message TTLs: one this command creates does, an existing
    one without allow_msg_ttl refuses it (exit 2, code reject).
    """
    target = _target(opts, scope, name, timeout)
    text = read_data(value)
    parsed: Any = text
    if json_value:
        try:
            parsed = msgspec.json.decode(text)
        except msgspec.DecodeError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="'VALUE'") from None

    async def put() -> SetResult:
        async with target.kv(config={"allow_msg_ttl": True} if ttl is not None else None) as store:
            return await store.set(key, parsed, ttl=ttl)

    result = _run(opts, put())
    Printer(opts.json).event(
        f"set {key} in kv {target} (seq {result.seq})", key=key, **msgspec.to_builtins(result)
    )


@kv.command("del", short_help="Delete a key.")
@_scope_arg
@_name_arg
@click.argument("key")
@_timeout_option
@common_options
@click.pass_obj
def kv_del(opts: Options, scope: str, name: str, key: str, timeout: float) -> None:
    """Delete KEY from KV store NAME. A missing key exits 1."""
    target = _target(opts, scope, name, timeout)

    async def delete() -> None:
        async with target.kv() as store:
            if not await store.delete(key):
                raise NotFound(f"key {key!r} in kv {target}")

    _run(opts, delete())
    Printer(opts.json).event(f"deleted {key} from kv {target}", key=key, deleted=True)


@kv.command("watch", short_help="Print a KV store's items, then each change.")
@_scope_arg
@_name_arg
@click.option("--count", "-c", type=click.IntRange(min=1), help="Exit after N changes.")
@_timeout_option
@common_options
@click.pass_obj
def kv_watch(opts: Options, scope: str, name: str, count: int | None, timeout: float) -> None:
    """Print the items of KV store NAME ('key=value'), then each change ('set key=value',
    'del key') until Ctrl-C or --count changes.

    With --json: {"event": "item" | "set" | "del", "key", "seq", "value"...}. Changes that
    cancel out between two reads may be reported as their net effect only.
    """
    target = _target(opts, scope, name, timeout)
    _follow(opts, _Watch(Printer(opts.json), count).run(target))


class _Watch:
    """The state of ``kv watch``: the key of each live seq, to name the keys that deletions remove."""

    def __init__(self, out: Printer, count: int | None) -> None:
        self.out = out
        self.count = count
        self.changes = 0
        self.keys: dict[int, str] = {}  # seq -> key
        self.seqs: dict[str, int] = {}  # key -> seq

    async def run(self, target: _Target) -> None:
        async with target.stream() as s:
            inventory = await s.inventory()
            current = inventory.last_seq if inventory is not None else 0
            self.out.note(f"watching kv {target} (Ctrl-C stops)")
            async for change in s.changefeed(0):
                if change.resync and await self._reload(s):
                    return
                # a page's messages first: a key re-set after a deletion in the same page is just set
                for message in change.messages:
                    if self._set(message, "item" if message.seq <= current else "set"):
                        return
                for low, high in change.deletes:
                    for seq in [q for q in self.keys if low <= q <= high]:
                        if self._del(seq):
                            return

    def _set(self, message: StoredMessage, event: str) -> bool:
        key = message.key
        if key is None or self.seqs.get(key) == message.seq:
            return False
        old = self.seqs.get(key)
        if old is not None:
            del self.keys[old]
        self.keys[message.seq], self.seqs[key] = key, message.seq
        value = _value(message)
        prefix = "" if event == "item" else "set "
        self.out.event(f"{prefix}{key}={format_value(value)}", event=event, key=key, seq=message.seq,
                       **_value_fields(value))  # fmt: skip
        return self._counted(event)

    def _del(self, seq: int) -> bool:
        key = self.keys.pop(seq)
        del self.seqs[key]
        self.out.event(f"del {key}", event="del", key=key, seq=seq)
        return self._counted("del")

    def _counted(self, event: str) -> bool:
        if event == "item":
            return False
        self.changes += 1
        return self.count is not None and self.changes >= self.count

    async def _reload(self, s: AStream) -> bool:
        """The feed could not list every deletion: diff against a fresh read of every item.

        Returns whether --count was reached.
        """
        live: dict[str, StoredMessage] = {}
        async for batch in s.get_all():
            live.update((m.key, m) for m in batch if m.key is not None)
        for key, seq in list(self.seqs.items()):
            if key not in live and self._del(seq):
                return True
        return any(self._set(message, "set") for message in live.values())
