"""persist: SQLite-persisted streams and KV stores, placed per subject scope (docs/persistence.md).

Layers, bottom up: the error tree, stream configuration and storage placement; the reference model
of a stream's semantics and the SQLite engine that implements it (:class:`StreamFile`, one file per
stream, group commit, a delete log for changefeeds) with :class:`StreamStore` (many streams, bounded
open files and threads, archives); the persist service (:class:`PersistServer`: a keyed actor per
scope on ``persist.<scope>.>``, and the bootlogs); its clients (:class:`AStream`, :class:`AKV`
direct; :class:`DStream`, :class:`DKV` cached); :mod:`persist.bootlog`; durable actor reminders.
"""

from . import bootlog as bootlog
from ._client import AKV as AKV
from ._client import AStream as AStream
from ._client import Change as Change
from ._client import list_streams as list_streams
from ._config import DEFAULT_DUPLICATE_WINDOW as DEFAULT_DUPLICATE_WINDOW
from ._config import DEFAULT_MAX_MEMORY as DEFAULT_MAX_MEMORY
from ._config import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from ._config import MAX_KEY_BYTES as MAX_KEY_BYTES
from ._config import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from ._config import UNLIMITED as UNLIMITED
from ._config import Discard as Discard
from ._config import StreamConfig as StreamConfig
from ._config import SyncMode as SyncMode
from ._dkv import DKV as DKV
from ._dkv import MISSING as MISSING
from ._dkv import DKVStatistics as DKVStatistics
from ._dkv import KeyChanged as KeyChanged
from ._dkv import KeyDeleted as KeyDeleted
from ._dkv import KeySaveFailed as KeySaveFailed
from ._dkv import KVEvent as KVEvent
from ._dkv import Merge as Merge
from ._dstream import Added as Added
from ._dstream import Deleted as Deleted
from ._dstream import DStream as DStream
from ._dstream import DStreamStatistics as DStreamStatistics
from ._dstream import Entry as Entry
from ._dstream import Older as Older
from ._dstream import Saved as Saved
from ._dstream import SaveFailed as SaveFailed
from ._dstream import StreamEvent as StreamEvent
from ._engine import ChangePage as ChangePage
from ._engine import StreamFile as StreamFile
from ._engine import StreamFileStatistics as StreamFileStatistics
from ._engine import Write as Write
from ._errors import BadConfig as BadConfig
from ._errors import BadPath as BadPath
from ._errors import BadRequest as BadRequest
from ._errors import Corrupt as Corrupt
from ._errors import Limit as Limit
from ._errors import NotFound as NotFound
from ._errors import OutsideScope as OutsideScope
from ._errors import PersistError as PersistError
from ._errors import Rejected as Rejected
from ._errors import RootInUse as RootInUse
from ._errors import StorageError as StorageError
from ._errors import TooLarge as TooLarge
from ._errors import TooSlow as TooSlow
from ._errors import WrongLastSequence as WrongLastSequence
from ._follower import Events as Events
from ._follower import Resync as Resync
from ._model import DeleteResult as DeleteResult
from ._model import Inventory as Inventory
from ._model import SetResult as SetResult
from ._model import StoredMessage as StoredMessage
from ._model import message_size as message_size
from ._placement import ENV_VARS as ENV_VARS
from ._placement import FILE_SUFFIX as FILE_SUFFIX
from ._placement import MAX_NAME_BYTES as MAX_NAME_BYTES
from ._placement import MAX_PART_BYTES as MAX_PART_BYTES
from ._placement import Placement as Placement
from ._placement import PlacementConfig as PlacementConfig
from ._placement import StoragePath as StoragePath
from ._reminders import DurableReminderStore as DurableReminderStore
from ._server import PersistServer as PersistServer
from ._service import BOOTLOG_CONFIG as BOOTLOG_CONFIG
from ._service import BootlogService as BootlogService
from ._service import PersistService as PersistService
from ._service import persist_mappings as persist_mappings
from ._store import StreamStore as StreamStore
from ._store import StreamStoreStatistics as StreamStoreStatistics
from ._wire import ResetResult as ResetResult
from ._wire import StreamInventory as StreamInventory
from ._wire import api_subject as api_subject
from ._workers import Workers as Workers
from .bootlog import BootlogEvent as BootlogEvent
from .bootlog import bootlog_stream as bootlog_stream

__all__ = [
    "AKV",
    "AStream",
    "Added",
    "BOOTLOG_CONFIG",
    "BadConfig",
    "BadPath",
    "BadRequest",
    "BootlogEvent",
    "BootlogService",
    "Change",
    "ChangePage",
    "Corrupt",
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_MAX_MEMORY",
    "DKV",
    "DKVStatistics",
    "DStream",
    "DStreamStatistics",
    "DeleteResult",
    "Deleted",
    "Discard",
    "DurableReminderStore",
    "ENV_VARS",
    "Entry",
    "Events",
    "FILE_SUFFIX",
    "Inventory",
    "KVEvent",
    "KeyChanged",
    "KeyDeleted",
    "KeySaveFailed",
    "Limit",
    "MAX_HEADER_BYTES",
    "MAX_KEY_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PART_BYTES",
    "MISSING",
    "Merge",
    "NotFound",
    "Older",
    "OutsideScope",
    "PersistError",
    "PersistServer",
    "PersistService",
    "Placement",
    "PlacementConfig",
    "Rejected",
    "ResetResult",
    "Resync",
    "RootInUse",
    "SaveFailed",
    "Saved",
    "SetResult",
    "StorageError",
    "StoragePath",
    "StoredMessage",
    "StreamConfig",
    "StreamEvent",
    "StreamFile",
    "StreamFileStatistics",
    "StreamInventory",
    "StreamStore",
    "StreamStoreStatistics",
    "SyncMode",
    "TooLarge",
    "TooSlow",
    "UNLIMITED",
    "Workers",
    "Write",
    "WrongLastSequence",
    "api_subject",
    "bootlog",
    "bootlog_stream",
    "list_streams",
    "message_size",
    "persist_mappings",
]
