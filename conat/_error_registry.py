"""Wire codes back to typed errors: one registry that every package registers its errors into.

A handler that raises a :class:`~conat.ConatError` answers with its ``code``, its text and, for a
registered class, its fields (:func:`error_fields`, sent as the reply's error data). The caller's
``request()`` (and ``request_many``, typed proxies, socket requests) turns the reply back into an
error with :func:`rebuild_error`: the registered class for the code, rebuilt from the fields, or a
plain :class:`~conat.RemoteError` for any other code.

A rebuilt error is both: an instance of the registered class (its fields, its message, ``except
WrongState``) *and* a :class:`~conat.RemoteError` (``remote_message``, ``subject``, ``data``), so code
that catches ``RemoteError`` keeps working when a package registers its errors. Its class is made
once per registered class, with the same name, module and docstring.

Rules, checked when a class registers:

- only symbolic (``str``) codes: a number (400, 429, 503...) is a status any handler may answer
  with for reasons of its own, so it stays a plain ``RemoteError``;
- one class per code across every package (two meanings for one wire code would rebuild the wrong
  one): registering another class for a taken code raises ``ValueError``;
- the class's constructor takes its fields by name, each kept as a same-named attribute (what
  :func:`error_fields` reads), all JSON-encodable. A reply whose fields do not fit the
  constructor (an older peer, a field missing) gives a plain ``RemoteError`` with the code, text
  and fields, never a failure.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar, cast

from ._errors import ConatError, ErrorCode, RemoteError

__all__ = ["error_fields", "rebuild_error", "register_error"]

E = TypeVar("E", bound=ConatError)

_BY_CODE: Final[dict[str, type[ConatError]]] = {}
"""Wire code → the class registered for it."""

_REMOTE: Final[dict[type[ConatError], type[RemoteError]]] = {}
"""Registered class → its remote variant (a subclass of it and of RemoteError)."""

_TYPED: Final[dict[type, type[ConatError]]] = {}
"""Remote variant → the registered class it stands for."""

_PARAMS: Final[dict[type, tuple[str, ...]]] = {}


def register_error(cls: type[E], *, codes: Iterable[str] = ()) -> type[E]:
    """Register ``cls`` as the error a reply with its code stands for; returns ``cls``.

    Use as a class decorator for a class with one code (its ``code`` class attribute), or call it
    with ``codes=`` for a class whose code is per instance (the file server's ``FsError``).
    Registering the same class again (or a reloaded module's class of the same name) is harmless.

    Raises:
        TypeError: ``cls`` is not a :class:`~conat.ConatError`, is a ``RemoteError``, or a code is
            not a string.
        ValueError: a code is already registered for another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, ConatError)) or issubclass(cls, RemoteError):
        raise TypeError(f"register_error() takes a ConatError class (not a RemoteError), not {cls!r}")
    wanted: list[str] = []
    for code in tuple(codes) or (cls.code,):
        if not isinstance(code, str) or not code:
            raise TypeError(
                f"{cls.__name__}: only symbolic codes are registered, not {code!r} (a number is a "
                "status any handler may send, which stays a RemoteError)"
            )
        wanted.append(code)
    for code in wanted:
        taken = _BY_CODE.get(code)
        if taken is not None and _name(taken) != _name(cls):
            raise ValueError(f"wire code {code!r} is already registered for {_name(taken)}, not {_name(cls)}")
    _PARAMS[cls] = _constructor_fields(cls)
    remote = _remote_variant(cls)
    _REMOTE[cls] = remote
    _TYPED[remote] = cls
    for code in wanted:
        _BY_CODE[code] = cls
    return cls


def _registered(code: ErrorCode) -> type[ConatError] | None:
    return _BY_CODE.get(code) if isinstance(code, str) else None


def rebuild_error(
    code: ErrorCode, message: str, *, subject: str = "", data: Mapping[str, Any] | None = None
) -> RemoteError:
    """The error a handler's error reply stands for.

    Args:
        code: the reply's code.
        message: the handler's text.
        subject: where the request went (named in a plain ``RemoteError``'s message).
        data: the handler's fields (:func:`error_fields` on its side), if it sent any.

    Returns:
        The registered class's remote variant rebuilt from ``data`` (a constructor parameter named
        ``code`` is given the wire code when ``data`` lacks it; fields the constructor does not take
        are ignored), else a plain :class:`RemoteError`.
    """
    fields = dict(data) if data else {}
    cls = _registered(code)
    if cls is not None:
        params = _PARAMS[cls]
        kwargs = {name: value for name, value in fields.items() if name in params}  # newer peer: more
        if "code" in params:
            kwargs.setdefault("code", code)
        remote = _REMOTE[cls]
        error = remote.__new__(remote)
        try:
            cls.__init__(error, **kwargs)
        except (TypeError, ValueError):  # fields missing or malformed (an older peer): keep them as data
            pass
        else:
            error.code = code
            error.remote_message = message
            error.subject = subject
            error.data = fields
            return error
    return RemoteError(code, message, subject, fields)


def error_fields(error: BaseException) -> dict[str, Any]:
    """The fields to send with ``error`` so the caller can rebuild it.

    For a registered class (or its remote variant): its constructor's arguments, read from the
    same-named attributes. For a plain :class:`RemoteError` passing through: the fields it came with.
    Anything else has none (its code and text still travel).
    """
    cls = _TYPED.get(type(error), type(error))
    params = _PARAMS.get(cls)
    if params is None:
        return dict(error.data) if isinstance(error, RemoteError) else {}
    return {name: getattr(error, name) for name in params if hasattr(error, name)}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _constructor_fields(cls: type) -> tuple[str, ...]:
    params = inspect.signature(cls).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in kinds)


def _remote_variant(cls: type[ConatError]) -> type[RemoteError]:
    """``cls`` as answered by a remote handler: a subclass of ``RemoteError`` and of ``cls``.

    ``RemoteError`` comes first in the MRO, so ``cls.__init__``'s ``super().__init__(message)``
    reaches ``ConatError`` past it; :func:`rebuild_error` sets the RemoteError fields itself.
    """

    def __reduce__(self: RemoteError) -> tuple[Any, ...]:  # copy/pickle: rebuild from the wire form
        return (_unreduce, (self.code, self.remote_message, self.subject, self.data))

    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__reduce__": __reduce__,
    }
    return cast("type[RemoteError]", type(cls.__name__, (RemoteError, cls), namespace))


def _unreduce(code: ErrorCode, message: str, subject: str, data: dict[str, Any]) -> RemoteError:
    return rebuild_error(code, message, subject=subject, data=data)
