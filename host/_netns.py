"""A network namespace per project whose only reachable endpoint is the host bus.

Design (and why not a veth pair): the namespace (made with pyroute2, named ``conat-<project id>``
under ``/run/netns``) has only its loopback interface, up. The host creates one listening TCP socket
*inside* it (``127.0.0.1:4222`` there, bound from a short-lived thread that enters the namespace)
and relays every connection accepted on it to the bus's real listener. So from inside, the bus
answers on ``nats://127.0.0.1:4222`` and nothing else exists: no other port of the host, loopback
or not, no other project, no outside network. A veth pair into the host's stack would expose every
service the host has bound to a wildcard address unless a packet filter is programmed as well, and
these hosts ship no iptables/nft tooling; the in-namespace listener needs none and cannot leak.

The relay lives in the host process: if the host dies, projects lose the bus until the restarted
host re-creates the listener in the same namespace (the namespace outlives the host, pinned by its
``/run/netns`` mount), and their clients reconnect on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Final, TypeVar

__all__ = ["BUS_PORT_INSIDE", "NetnsRelay", "create_netns", "netns_path", "remove_netns"]

log = logging.getLogger("conat.host.netns")

T = TypeVar("T")

CLONE_NEWNET: Final = 0x40000000
BUS_PORT_INSIDE: Final = 4222
NETNS_DIR: Final = "/run/netns"
_RELAY_BUFFER: Final = 256 * 1024


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def create_netns(name: str) -> None:
    """Create (or reuse) the namespace and bring its loopback up. Blocking: call it in a thread.

    No fork (pyroute2's ``netns.create`` forks a child, which can deadlock in a threaded host on a
    lock held at fork time): a throwaway thread unshares its own network namespace, pins it with
    pyroute2's bind mount at ``/run/netns/<name>``, and brings ``lo`` up from inside.

    Raises:
        OSError: the namespace cannot be made (not root, no CAP_NET_ADMIN).
    """
    from pyroute2 import netns

    if name not in netns.listnetns():
        _in_thread(lambda: _make(name))
    _in_thread(lambda: _loopback_up(name))


def _make(name: str) -> None:
    from pyroute2 import netns

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    netns.attach(name, f"self/task/{threading.get_native_id()}")


def _loopback_up(name: str) -> None:
    from pyroute2 import IPRoute

    with open(netns_path(name), "rb") as ns:
        _setns(ns.fileno())
    with IPRoute() as ip:
        index = ip.link_lookup(ifname="lo")[0]
        ip.link("set", index=index, state="up")


def _in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a fresh thread (namespace changes stay in it) and return its result."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="conat-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def remove_netns(name: str) -> None:
    from pyroute2 import netns

    with contextlib.suppress(OSError, FileNotFoundError):
        if name in netns.listnetns():
            netns.remove(name)


def _listen_inside(name: str, port: int) -> socket.socket:
    """A listening socket bound to ``127.0.0.1:port`` inside namespace ``name``.

    ``setns`` changes only the calling thread's namespace, so a throwaway thread does it and the
    event loop's thread never leaves the host's namespace. A socket keeps the namespace it was made in.
    """

    def work() -> socket.socket:
        with open(netns_path(name), "rb") as ns:
            _setns(ns.fileno())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    return _in_thread(work)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_RELAY_BUFFER):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


class NetnsRelay:
    """The bus endpoint inside one project's namespace: accepts there, connects to ``bus`` here."""

    def __init__(self, name: str, bus_host: str, bus_port: int, *, port: int = BUS_PORT_INSIDE) -> None:
        self.name = name
        self.bus = (bus_host, bus_port)
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url_inside(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = await asyncio.to_thread(_listen_inside, self.name, self.port)
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.bus)
            except OSError as e:
                log.warning("netns %s: cannot reach the bus at %s:%d: %s", self.name, *self.bus, e)
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            # the relay is closing: end this connection quietly (asyncio's stream server logs a
            # connection task that ends cancelled as an error)
            writer.close()
        finally:
            self._tasks.discard(task)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
