"""persist: SQLite-persisted streams and KV stores (DESIGN.md §6).

This layer is the pure foundation: the error tree, stream configuration, storage placement, and the
reference model of a stream's semantics (which the SQLite engine implements and is tested against).
"""

from ._config import DEFAULT_DUPLICATE_WINDOW as DEFAULT_DUPLICATE_WINDOW
from ._config import DEFAULT_MAX_MEMORY as DEFAULT_MAX_MEMORY
from ._config import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from ._config import MAX_KEY_BYTES as MAX_KEY_BYTES
from ._config import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from ._config import UNLIMITED as UNLIMITED
from ._config import Discard as Discard
from ._config import StreamConfig as StreamConfig
from ._config import SyncMode as SyncMode
from ._errors import BadConfig as BadConfig
from ._errors import BadPath as BadPath
from ._errors import BadRequest as BadRequest
from ._errors import Corrupt as Corrupt
from ._errors import Limit as Limit
from ._errors import NotFound as NotFound
from ._errors import OutsideScope as OutsideScope
from ._errors import PersistError as PersistError
from ._errors import Rejected as Rejected
from ._errors import TooLarge as TooLarge
from ._errors import WrongLastSequence as WrongLastSequence
from ._model import DeleteResult as DeleteResult
from ._model import Inventory as Inventory
from ._model import Message as Message
from ._model import SetResult as SetResult
from ._model import StreamModel as StreamModel
from ._model import message_size as message_size
from ._placement import ENV_VARS as ENV_VARS
from ._placement import FILE_SUFFIX as FILE_SUFFIX
from ._placement import MAX_NAME_BYTES as MAX_NAME_BYTES
from ._placement import MAX_PART_BYTES as MAX_PART_BYTES
from ._placement import Placement as Placement
from ._placement import PlacementConfig as PlacementConfig
from ._placement import StoragePath as StoragePath

__all__ = [
    "BadConfig",
    "BadPath",
    "BadRequest",
    "Corrupt",
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_MAX_MEMORY",
    "DeleteResult",
    "Discard",
    "ENV_VARS",
    "FILE_SUFFIX",
    "Inventory",
    "Limit",
    "MAX_HEADER_BYTES",
    "MAX_KEY_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PART_BYTES",
    "Message",
    "NotFound",
    "OutsideScope",
    "PersistError",
    "Placement",
    "PlacementConfig",
    "Rejected",
    "SetResult",
    "StoragePath",
    "StreamConfig",
    "StreamModel",
    "SyncMode",
    "TooLarge",
    "UNLIMITED",
    "WrongLastSequence",
    "message_size",
]
