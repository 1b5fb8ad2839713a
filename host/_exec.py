"""``project.<p>.exec``: run a command in a project, over a reliable socket.

Protocol: the caller connects a socket to ``project.<p>.exec.<token>`` (any fresh token) and sends
one :class:`~host.ExecRequest`. The project answers with :class:`~host.ExecOutput` messages (stdout
and stderr pieces, each stream in order) and ends with exactly one :class:`~host.ExecExit`, then
closes. A socket (not ``request_many``) because cancellation must reach the project: when the
caller closes the socket, or its connection dies (the socket's peer timeout), the command's whole
process group is killed. The timeout kills it too, and the exit says ``timed_out``.

A command runs in its own process group, in the project's home (``cwd`` is relative to it), with
the project's environment plus ``env``. Output is sent as it comes, in pieces of up to 64 KiB; the
socket's flow control holds the command's pipe when the caller reads slowly (nothing is buffered
without bound here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

import conat
from subjects import project_subject

from ._errors import BadArgument
from ._wire import ExecExit, ExecOutput, ExecRequest

__all__ = ["ExecResult", "exec_command", "exec_stream", "exec_subject", "serve_exec"]

log = logging.getLogger("conat.host.exec")

CHUNK: Final = 64 * 1024
COMMAND_OOM_SCORE_ADJ: Final = 500
"""Commands run with this ``oom_score_adj`` (raising needs no privilege; their children inherit it):
under the project's memory cap the kernel kills the hungry command, not the program serving it."""
_SHELL: Final = "/bin/sh"
_EVENTS: Final = msgspec.msgpack.Decoder(ExecOutput | ExecExit)


def exec_subject(project_id: str, token: str) -> str:
    """The concrete subject of one exec socket of ``project_id``."""
    return project_subject(project_id, "exec", token)


def exec_pattern(project_id: str) -> str:
    """What a project's exec service listens on: ``project.<p>.exec.*``."""
    return exec_subject(project_id, "x")[: -len("x")] + "*"


# ---- caller side --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The collected outcome of :func:`exec_command`."""

    stdout: bytes
    stderr: bytes
    exit: ExecExit

    @property
    def code(self) -> int | None:
        return self.exit.code


async def exec_stream(
    client: conat.Client,
    project_id: str,
    command: list[str],
    *,
    cwd: str = "",
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
) -> AsyncIterator[ExecOutput | ExecExit]:
    """Run ``command`` in the project and yield its output as it comes, then its exit.

    Leaving the iteration early (``break``, cancellation) closes the socket, which kills the
    command. Raises :class:`~host.BadArgument` for a bad request (checked before sending) and the
    socket's errors (``NoResponders`` when the project's process does not answer within
    ``connect_timeout``: it is not running, or has not reconnected yet after a host restart, which
    is why the connect waits for interest rather than failing at the first "no responders").
    """
    request = ExecRequest(command=command, cwd=cwd, env=dict(env or {}), stdin=stdin, timeout=timeout)
    subject = exec_subject(project_id, secrets.token_hex(8))
    sock = await client.socket_connect(subject, timeout=connect_timeout, wait_for_interest=True)
    try:
        await sock.send(msgspec.msgpack.encode(request), encoding="raw")
        async for msg in sock:
            event = _EVENTS.decode(msg.raw)
            yield event
            if isinstance(event, ExecExit):
                return
    finally:
        with contextlib.suppress(conat.ConatError):
            await sock.aclose(timeout=2.0)


async def exec_command(
    client: conat.Client, project_id: str, command: list[str], **options: object
) -> ExecResult:
    """Run ``command`` to the end and collect its output (see :func:`exec_stream` for options)."""
    out: list[bytes] = []
    err: list[bytes] = []
    end: ExecExit | None = None
    async for event in exec_stream(client, project_id, command, **options):  # type: ignore[arg-type]
        if isinstance(event, ExecOutput):
            (out if event.stream == "stdout" else err).append(event.data)
        else:
            end = event
    if end is None:
        end = ExecExit(code=None, error="the project closed the exec socket before the exit")
    return ExecResult(stdout=b"".join(out), stderr=b"".join(err), exit=end)


# ---- project side -------------------------------------------------------------------------------


async def _forward(stream: asyncio.StreamReader, name: str, sock: conat.Socket) -> None:
    while data := await stream.read(CHUNK):
        await sock.send(msgspec.msgpack.encode(ExecOutput(stream=name, data=data)), encoding="raw")  # type: ignore[arg-type]


def _decode_request(raw: bytes) -> ExecRequest:
    try:
        return msgspec.msgpack.decode(raw, type=ExecRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadArgument("request", str(e)) from None


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _watch_peer(sock: conat.Socket) -> None:
    """Return when the caller closed the socket or it failed (anything it sends is ignored)."""
    with contextlib.suppress(conat.ConatError):
        async for _ in sock:
            pass


async def serve_exec(
    sock: conat.Socket, home: str, env: Mapping[str, str], on_exec: Callable[[], None]
) -> None:
    """Answer one exec socket (the project program calls this for each connection)."""
    try:
        first = await sock.recv(timeout=30.0)
        request = _decode_request(first.raw)
        cwd = os.path.normpath(os.path.join(home, request.cwd))  # noqa: ASYNC240 - no I/O
        if os.path.commonpath([home, cwd]) != os.path.normpath(home):  # noqa: ASYNC240 - no I/O
            raise BadArgument("cwd", f"{request.cwd!r} leaves the project's home")
        if not await asyncio.to_thread(os.path.isdir, cwd):
            raise BadArgument("cwd", f"{request.cwd!r} is not a directory in the project")
    except (BadArgument, conat.ConatError) as e:
        with contextlib.suppress(conat.ConatError):
            await sock.send(msgspec.msgpack.encode(ExecExit(code=None, error=str(e))), encoding="raw")
            await sock.aclose(timeout=2.0)
        return
    on_exec()
    end = await _run(sock, request, cwd, {**env, **request.env})
    with contextlib.suppress(conat.ConatError):
        await sock.send(msgspec.msgpack.encode(end), encoding="raw")
        await sock.aclose(timeout=5.0)


def _argv(command: list[str], env: dict[str, str], cwd: str) -> list[str] | str:
    """The argv that runs ``command`` with a raised ``oom_score_adj`` set by the child itself before
    it execs (no race with a parent-side write), or why it cannot run."""
    program = command[0]
    found = shutil.which(program, path=env.get("PATH")) if "/" not in program else os.path.join(cwd, program)
    if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
        return f"cannot run {program!r}: not found or not executable"
    if not os.path.exists(_SHELL):
        return [found, *command[1:]]
    return [_SHELL, "-c", f'echo {COMMAND_OOM_SCORE_ADJ} > /proc/self/oom_score_adj 2>/dev/null; exec "$@"',
            program, found, *command[1:]]  # fmt: skip


async def _run(sock: conat.Socket, request: ExecRequest, cwd: str, env: dict[str, str]) -> ExecExit:
    argv = await asyncio.to_thread(_argv, request.command, env, cwd)
    if isinstance(argv, str):
        return ExecExit(code=None, error=argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE if request.stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        return ExecExit(code=None, error=f"cannot run {request.command[0]!r}: {e.strerror or e}")
    assert proc.stdout is not None and proc.stderr is not None
    if request.stdin is not None and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.write(request.stdin)
            await proc.stdin.drain()
        proc.stdin.close()
    output = asyncio.gather(_forward(proc.stdout, "stdout", sock), _forward(proc.stderr, "stderr", sock))
    finished = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(output), request.timeout))
    peer = asyncio.ensure_future(_watch_peer(sock))
    timed_out = False
    try:
        await asyncio.wait({finished, peer}, return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():  # the caller left: kill the command
            _killpg(proc.pid)
        else:
            try:
                finished.result()
            except TimeoutError:
                timed_out = True
                _killpg(proc.pid)
            except conat.ConatError:  # the socket broke while sending output
                _killpg(proc.pid)
    finally:
        peer.cancel()
        finished.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(output, 5.0)
    code = await proc.wait()
    _killpg(proc.pid)  # whatever the command left behind in its group
    if code < 0:
        return ExecExit(code=None, signal=-code, timed_out=timed_out)
    return ExecExit(code=code, timed_out=timed_out)
