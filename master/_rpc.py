"""Several RPC namespaces on one subject: ``projects.create``, ``hosts.list``, ``tokens.connect``...

master's account API answers four namespaces on ``master.account-<a>.api`` (and its host API a
fifth on ``master.host-<h>.api``); conat's typed services serve one namespace per subject. The
:class:`Router` maps each ``<namespace>.<method>`` of the wire (``conat.RpcRequest``) to a method
of one namespace object and binds the call's arguments to its signature with msgspec: every
argument is converted to its annotated type (nested Structs validated by their own
``__post_init__``), unknown keyword arguments and missing ones are refused, and every refusal is a
:class:`~conat.platform.BadArgument` (400) naming the method, before the method runs. An unknown
method is a 404. Each method's first parameter after ``self`` is the caller (filled in by the
router, never from the wire).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from conat import NOT_FOUND, RemoteError, RpcRequest
from conat.platform import BadArgument

__all__ = ["AfterReply", "Router"]


class AfterReply:
    """A method's result plus work to do once the reply is out: a method that revokes its own
    caller's tokens (deleting the key it is not using) must answer before the caller's connection
    is cut, or the caller never hears back."""

    __slots__ = ("then", "value")

    def __init__(self, value: Any, then: Callable[[], Awaitable[object]]) -> None:
        self.value = value
        self.then = then


class _Endpoint:
    """One method: its parameters (after self and the caller) as a msgspec Struct type."""

    __slots__ = ("fn", "names", "qualified", "struct")

    def __init__(self, qualified: str, fn: Callable[..., Awaitable[Any]]) -> None:
        self.qualified = qualified
        self.fn = fn
        hints = typing.get_type_hints(fn)
        parameters = list(inspect.signature(fn).parameters.values())[2:]  # self and the caller
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for p in parameters:
            kind = hints.get(p.name, Any)
            fields.append((p.name, kind) if p.default is p.empty else (p.name, kind, p.default))
        self.names = tuple(p.name for p in parameters)
        self.struct = msgspec.defstruct(
            qualified.replace(".", "_"), fields, forbid_unknown_fields=True, kw_only=False
        )

    def bind(self, request: RpcRequest) -> dict[str, Any]:
        if len(request.args) > len(self.names):
            raise BadArgument(
                self.qualified, f"takes at most {len(self.names)} arguments, got {len(request.args)}"
            )
        values: dict[str, Any] = dict(zip(self.names, request.args, strict=False))
        for name, value in request.kwargs.items():
            if name in values:
                raise BadArgument(self.qualified, f"argument {name!r} given twice")
            values[name] = value
        try:
            bound = msgspec.convert(values, self.struct)
        except msgspec.ValidationError as e:
            raise BadArgument(self.qualified, str(e)) from None
        return {name: getattr(bound, name) for name in self.names}


class Router:
    """``{namespace: object}`` -> one table of ``namespace.method`` endpoints (public coroutines)."""

    def __init__(self, namespaces: Mapping[str, object]) -> None:
        self.endpoints: dict[str, _Endpoint] = {}
        for namespace, obj in namespaces.items():
            for name, fn in inspect.getmembers(type(obj), inspect.iscoroutinefunction):
                if not name.startswith("_"):
                    qualified = f"{namespace}.{name}"
                    self.endpoints[qualified] = _Endpoint(qualified, fn)
        self._objects = dict(namespaces)

    def __contains__(self, name: str) -> bool:
        return name in self.endpoints

    async def call(self, caller: object, request: RpcRequest) -> Any:
        """Run ``request`` as ``caller``.

        Raises:
            RemoteError: 404 for an unknown method.
            BadArgument: arguments that do not fit the method.
        """
        endpoint = self.endpoints.get(request.name)
        if endpoint is None:
            raise RemoteError(NOT_FOUND, f"unknown method {request.name!r}")
        namespace = request.name.partition(".")[0]
        kwargs = endpoint.bind(request)
        return await endpoint.fn(self._objects[namespace], caller, **kwargs)
