"""Typed service proxies and the server side that answers them.

Wire shape of a call (docs/wire-protocol.md): ``RpcRequest{name: "<namespace>.<method>", args, kwargs}``; the
reply is the method's return value, or an error reply whose code the caller sees in
:class:`RemoteError`. Arguments are converted to the implementation's annotated parameter types
and the result to the protocol's annotated return type, both with msgspec, so a proxy's caller
and the implementation share msgspec Structs without hand-written (de)serialization.

Error codes a caller can get: ``404`` unknown method, ``400`` bad arguments (wrong count, wrong
types, undecodable body), the ``code`` of a :class:`ConatError` the implementation raised, else
``500``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, final

import msgspec

from ._codecs import DEFAULT_ENCODING, Encoding
from ._error_registry import error_fields
from ._errors import BAD_REQUEST, INTERNAL, NOT_FOUND, ConatError, ErrorCode, PayloadError, RemoteError
from ._message import Message
from ._micro import MicroService, micro_name
from ._request import request

if TYPE_CHECKING:
    from ._client import Client
    from ._subscription import Subscription

__all__ = [
    "Dispatcher",
    "RpcRequest",
    "error_reply",
    "make_proxy",
    "reply_encoding",
    "respond_error",
    "respond_result",
    "rpc_methods",
    "serve",
]

log = logging.getLogger("conat.service")

T = TypeVar("T")
DEFAULT_CONCURRENCY: Final = 64


class RpcRequest(msgspec.Struct, omit_defaults=True):
    """The body of a typed call."""

    name: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


def _namespace(obj: object, namespace: str | None) -> str:
    if namespace is not None:
        return namespace
    value = getattr(obj, "__conat_namespace__", "")
    return value if isinstance(value, str) else ""


def _qualify(namespace: str, method: str) -> str:
    return f"{namespace}.{method}" if namespace else method


def rpc_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The public coroutine functions of ``cls`` (what a proxy can call and serve answers).

    Names a class lists in ``__conat_private__`` (lifecycle hooks of a base class) are left out.
    """
    private: frozenset[str] = getattr(cls, "__conat_private__", frozenset())
    members = inspect.getmembers(cls, inspect.iscoroutinefunction)
    return {n: fn for n, fn in members if not n.startswith("_") and n not in private}


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations; an unresolvable one (a name local to a function) counts as ``Any``."""
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError, AttributeError):
        return {}


def _return_type(fn: Callable[..., Any]) -> Any:
    result = _hints(fn).get("return", Any)
    return Any if result is type(None) else result


class _Proxy:
    """A dynamic object whose attributes are the protocol's methods, sending RPC requests."""

    def __init__(
        self,
        client: Client,
        protocol: type,
        subject: str,
        namespace: str,
        timeout: float,
        headers: Callable[[], dict[str, str] | None] | None,
    ) -> None:
        self._client = client
        self._subject = subject
        self._timeout = timeout
        self._headers = headers
        self._methods: dict[str, Callable[..., Any]] = {}
        for name, fn in rpc_methods(protocol).items():
            self._methods[name] = self._make_method(_qualify(namespace, name), _return_type(fn))

    def _make_method(self, qualified: str, result_type: Any) -> Callable[..., Any]:
        client, subject = self._client, self._subject

        async def call(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            body = RpcRequest(qualified, list(args), kwargs)
            headers = self._headers() if self._headers is not None else None
            # The headers are call context of a layer above (the actor call chain): Conat-*
            # extension names may pass, the bus's own may not (conat._headers).
            payload, headers = client._core.prepare(subject, body, headers, None, extensions=True)
            msg = await request(client, subject, payload, headers, timeout or self._timeout)
            if result_type is Any:
                return msg.data
            return msg.decode(result_type)

        call.__name__ = qualified
        return call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(f"service has no method {name!r}") from None

    def __repr__(self) -> str:
        return f"<service proxy {self._subject!r} methods={sorted(self._methods)}>"


def make_proxy(
    client: Client,
    protocol: Callable[..., T],
    subject: str,
    *,
    timeout: float,
    namespace: str | None = None,
    headers: Callable[[], dict[str, str] | None] | None = None,
) -> T:
    if not isinstance(protocol, type):
        raise TypeError(f"service() takes a class (a Protocol), not {protocol!r}")
    return cast(T, _Proxy(client, protocol, subject, _namespace(protocol, namespace), timeout, headers))


_EXACT: Final = frozenset({bytes, str, int, float, bool})
"""Annotations whose values need no conversion when the decoded value already has that exact type."""


class _Endpoint:
    """One method of a class, with its signature (``self`` dropped) and resolved parameter types.

    Calls with positional arguments only (what proxies send) take a fast path that skips
    ``Signature.bind``; anything else is bound by the signature, which names what is wrong.
    """

    __slots__ = ("fn", "params", "positional", "required", "signature")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        signature = inspect.signature(fn)
        self.signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        hints = _hints(fn)
        self.params = {name: hints.get(name, Any) for name in self.signature.parameters}
        simple = all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            or (p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty)
            for p in self.signature.parameters.values()
        )
        plain = [
            (name, self.params[name])
            for name, p in self.signature.parameters.items()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        self.positional: tuple[tuple[str, Any], ...] | None = tuple(plain) if simple else None
        self.required = sum(
            1
            for p in self.signature.parameters.values()
            if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
        )

    def bind(self, request: RpcRequest) -> tuple[list[Any], dict[str, Any]]:
        positional = self.positional
        if (
            positional is not None
            and not request.kwargs
            and self.required <= len(request.args) <= len(positional)
        ):
            return [
                self._convert(request.name, name, value, annotation)
                for (name, annotation), value in zip(positional, request.args, strict=False)
            ], {}
        try:
            bound = self.signature.bind(*request.args, **request.kwargs)
        except TypeError as e:
            raise RemoteError(BAD_REQUEST, f"{request.name}: {e}") from None
        args: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.signature.parameters[name].kind
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                args[name] = value
                continue
            args[name] = self._convert(request.name, name, value, self.params.get(name, Any))
        bound.arguments.update(args)
        return list(bound.args), dict(bound.kwargs)

    @staticmethod
    def _convert(method: str, name: str, value: Any, annotation: Any) -> Any:
        if annotation is Any or (type(value) is annotation and annotation in _EXACT):
            return value
        try:
            return msgspec.convert(value, annotation)
        except (msgspec.ValidationError, TypeError) as e:
            raise RemoteError(BAD_REQUEST, f"{method}: argument {name!r}: {e}") from None


@final
class Dispatcher:
    """The RPC table of a class, built once and shared by every instance it serves.

    :meth:`invoke` decodes a request, finds the method, converts the arguments and awaits the
    method on the given instance; it raises what the method raises, or :class:`RemoteError` 400/404
    for a bad request. :func:`respond_outcome` turns either outcome into the reply.
    """

    def __init__(self, cls: type, namespace: str = "") -> None:
        self.endpoints = {_qualify(namespace, name): _Endpoint(fn) for name, fn in rpc_methods(cls).items()}

    def decode(self, msg: Message) -> RpcRequest:
        try:
            return msg.decode(RpcRequest)
        except PayloadError as e:
            raise RemoteError(BAD_REQUEST, f"bad RPC request: {e.detail}") from None

    async def call(self, instance: object, request: RpcRequest) -> Any:
        endpoint = self.endpoints.get(request.name)
        if endpoint is None:
            raise RemoteError(NOT_FOUND, f"unknown method {request.name!r}")
        args, kwargs = endpoint.bind(request)
        return await endpoint.fn(instance, *args, **kwargs)

    async def invoke(self, instance: object, msg: Message) -> Any:
        return await self.call(instance, self.decode(msg))


def error_reply(error: BaseException) -> tuple[ErrorCode, str, dict[str, Any]]:
    """The code, text and fields a caller gets for ``error`` raised while answering it:
    ``respond_error(msg, *error_reply(e))`` sends them.

    A :class:`ConatError` keeps its code, and a registered one sends its fields, so the caller
    rebuilds the same typed error (:func:`conat.register_error`); a :class:`RemoteError` from a call
    the handler made passes on as it came; anything else is 500 with the exception's type and text.
    """
    if isinstance(error, RemoteError):
        return error.code, error.remote_message, error_fields(error)
    if isinstance(error, ConatError):
        return error.code, str(error), error_fields(error)
    return INTERNAL, f"{type(error).__name__}: {error}", {}


def reply_encoding(request: Message, result: Any) -> Encoding:
    """The encoding to answer ``request`` with ``result`` in: the caller's own.

    A JSON request gets a JSON reply and a msgpack request a msgpack one, so a client answers
    in the encoding it asked in. A raw request gets raw bytes back when the result is bytes or
    text, else (a structure raw bytes cannot carry) msgpack; so does a request whose encoding is
    unknown. A handler that wants another encoding chooses it explicitly.
    """
    try:
        encoding = request.codec.name
    except PayloadError:
        return DEFAULT_ENCODING
    if encoding == "raw" and not isinstance(result, bytes | bytearray | memoryview | str):
        return DEFAULT_ENCODING
    return encoding


async def respond_result(msg: Message, result: Any) -> None:
    """Reply with ``result`` in the caller's encoding (:func:`reply_encoding`); one that cannot
    be encoded becomes a 500 error reply."""
    if not msg.reply:
        return
    try:
        await msg.respond(result, encoding=reply_encoding(msg, result))
    except PayloadError as e:
        await respond_error(msg, INTERNAL, f"cannot encode the result: {e.detail}")


async def serve(
    client: Client,
    subject: str,
    impl: object,
    *,
    queue: str | None = None,
    namespace: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Subscription:
    """Answer typed calls on ``subject`` with ``impl``'s public async methods.

    Up to ``concurrency`` calls run at once; beyond that, requests wait in the subscription's
    bounded buffer. An exception in a method becomes an error reply and never ends the service.
    Replies are in the caller's encoding. The service answers NATS micro discovery (``$SRV``)
    as long as the subscription lives: named after ``impl``'s class, one endpoint per method.
    """
    cls = type(impl)
    dispatcher = Dispatcher(cls, _namespace(impl, namespace))
    limiter = asyncio.Semaphore(concurrency)
    micro = MicroService(
        micro_name(cls.__name__),
        subject,
        dispatcher.endpoints,
        description=(cls.__doc__ or "").strip().split("\n")[0],
        metadata={"conat.service": cls.__qualname__},
        queue_group=queue or "",
    )

    async def handle(msg: Message) -> None:
        started = time.perf_counter_ns()
        method: str | None = None
        try:
            request = dispatcher.decode(msg)
            method = request.name
            result = await dispatcher.call(impl, request)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            micro.record(method, time.perf_counter_ns() - started, e)
            if not isinstance(e, ConatError):
                log.exception("RPC %s on %r failed", msg.subject, subject)
            await respond_error(msg, *error_reply(e))
        else:
            micro.record(method, time.perf_counter_ns() - started, None)
            await respond_result(msg, result)
        finally:
            limiter.release()

    async def dispatch(msg: Message) -> None:
        await limiter.acquire()
        client._core.spawn(handle(msg))

    sub = await client.subscribe(subject, queue=queue, callback=dispatch, cluster_wide=True)
    await micro.advertise(client, alive=lambda: not sub.closed)
    return sub


async def respond_error(
    msg: Message, code: ErrorCode, text: str, data: Mapping[str, Any] | None = None
) -> None:
    """Send an error reply (with ``data``, the error's fields) if ``msg`` wants one; a failure to
    send is logged, never raised."""
    if msg.reply:
        try:
            await msg.respond_error(code, text, data=data)
        except ConatError:
            log.debug("could not send an error reply on %r", msg.subject)
