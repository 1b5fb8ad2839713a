"""conat: a message bus for Python services on NATS.

Start with :func:`connect`; the returned :class:`Client` publishes, subscribes, requests, streams
replies and chunks large payloads. :class:`NatsServer` runs a private nats-server. The error tree
of every package is drawn in :mod:`conat._errors`; test helpers are in :mod:`conat.testing`.
"""

from subjects import InvalidSubject as InvalidSubject

from ._backoff import Backoff as Backoff
from ._backoff import BackoffSequence as BackoffSequence
from ._backoff import retry as retry
from ._client import Client as Client
from ._client import ClientState as ClientState
from ._client import ClientStatistics as ClientStatistics
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._codecs import JSON as JSON
from ._codecs import MSGPACK as MSGPACK
from ._codecs import RAW as RAW
from ._codecs import Codec as Codec
from ._codecs import get_codec as get_codec
from ._connect import connect as connect
from ._error_registry import error_fields as error_fields
from ._error_registry import rebuild_error as rebuild_error
from ._error_registry import register_error as register_error
from ._errors import BAD_REQUEST as BAD_REQUEST
from ._errors import BUSY as BUSY
from ._errors import INTERNAL as INTERNAL
from ._errors import NOT_FOUND as NOT_FOUND
from ._errors import UNAVAILABLE as UNAVAILABLE
from ._errors import BadURL as BadURL
from ._errors import ClosedError as ClosedError
from ._errors import ConatError as ConatError
from ._errors import ConnectError as ConnectError
from ._errors import Disconnected as Disconnected
from ._errors import EndOfStream as EndOfStream
from ._errors import ErrorCode as ErrorCode
from ._errors import Forbidden as Forbidden
from ._errors import NoResponders as NoResponders
from ._errors import PayloadError as PayloadError
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import PeerDead as PeerDead
from ._errors import PortInUse as PortInUse
from ._errors import RemoteError as RemoteError
from ._errors import ServerBinaryNotFound as ServerBinaryNotFound
from ._errors import ServerConfigRejected as ServerConfigRejected
from ._errors import ServerError as ServerError
from ._errors import SocketBusy as SocketBusy
from ._errors import SocketClosed as SocketClosed
from ._errors import SocketError as SocketError
from ._errors import SocketProtocolError as SocketProtocolError
from ._errors import SocketReset as SocketReset
from ._errors import Timeout as Timeout
from ._errors import Unauthorized as Unauthorized
from ._interest import PROBE_ACCOUNT as PROBE_ACCOUNT
from ._interest import PROBE_SUBJECT as PROBE_SUBJECT
from ._interest import probe_blocks as probe_blocks
from ._message import Message as Message
from ._micro import EndpointInfo as EndpointInfo
from ._micro import EndpointStatistics as EndpointStatistics
from ._micro import EndpointStats as EndpointStats
from ._micro import InfoResponse as InfoResponse
from ._micro import MicroService as MicroService
from ._micro import PingResponse as PingResponse
from ._micro import StatsResponse as StatsResponse
from ._paths import data_dir as data_dir
from ._paths import try_lock_file as try_lock_file
from ._process import die_with_parent as die_with_parent
from ._queue import BoundedQueue as BoundedQueue
from ._queue import QueueStatistics as QueueStatistics
from ._ratelimit import TokenBucket as TokenBucket
from ._server import NatsServer as NatsServer
from ._server_config import ClusterConfig as ClusterConfig
from ._server_config import LeafNodeConfig as LeafNodeConfig
from ._server_config import LeafUser as LeafUser
from ._server_config import ServerConfig as ServerConfig
from ._server_config import WebsocketConfig as WebsocketConfig
from ._service import Dispatcher as Dispatcher
from ._service import RpcRequest as RpcRequest
from ._service import error_reply as error_reply
from ._service import reply_encoding as reply_encoding
from ._service import respond_error as respond_error
from ._socket import Socket as Socket
from ._socket import SocketStatistics as SocketStatistics
from ._socket_message import SocketMessage as SocketMessage
from ._socket_protocol import SocketState as SocketState
from ._socket_server import SocketServer as SocketServer
from ._socket_server import SocketServerStatistics as SocketServerStatistics
from ._subscription import Subscription as Subscription
from ._subscription import SubscriptionStatistics as SubscriptionStatistics

__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "Backoff",
    "BackoffSequence",
    "BadURL",
    "BoundedQueue",
    "Client",
    "ClientState",
    "ClientStatistics",
    "Clock",
    "ClosedError",
    "ClusterConfig",
    "Codec",
    "ConatError",
    "ConnectError",
    "Disconnected",
    "Dispatcher",
    "EndOfStream",
    "EndpointInfo",
    "EndpointStatistics",
    "EndpointStats",
    "ErrorCode",
    "Forbidden",
    "INTERNAL",
    "InfoResponse",
    "InvalidSubject",
    "JSON",
    "LeafNodeConfig",
    "LeafUser",
    "MSGPACK",
    "Message",
    "MicroService",
    "NOT_FOUND",
    "NatsServer",
    "NoResponders",
    "PROBE_ACCOUNT",
    "PROBE_SUBJECT",
    "PayloadError",
    "PayloadTooLarge",
    "PeerDead",
    "PingResponse",
    "PortInUse",
    "QueueStatistics",
    "RAW",
    "RemoteError",
    "RpcRequest",
    "ServerBinaryNotFound",
    "ServerConfig",
    "ServerConfigRejected",
    "ServerError",
    "Socket",
    "SocketBusy",
    "SocketClosed",
    "SocketError",
    "SocketMessage",
    "SocketProtocolError",
    "SocketReset",
    "SocketServer",
    "SocketServerStatistics",
    "SocketState",
    "SocketStatistics",
    "StatsResponse",
    "Subscription",
    "SubscriptionStatistics",
    "SystemClock",
    "Timeout",
    "TokenBucket",
    "UNAVAILABLE",
    "Unauthorized",
    "WebsocketConfig",
    "connect",
    "data_dir",
    "die_with_parent",
    "error_fields",
    "error_reply",
    "get_codec",
    "probe_blocks",
    "rebuild_error",
    "register_error",
    "reply_encoding",
    "respond_error",
    "retry",
    "try_lock_file",
]
