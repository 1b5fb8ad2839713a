"""host: the project host's services. So far: the file server (``fs.project-<p>``, DESIGN.md §8).

The file server (:class:`FileServer`) serves each project's tree over the bus: typed RPCs
(:class:`FileSystem`), streamed transfers of any size and watch sockets, every path resolved beneath
the project root by the kernel (:mod:`conat.beneath`). Clients use :func:`fs`.
"""

from ._fs_actor import FileServerActor as FileServerActor
from ._fs_audit import AuditLog as AuditLog
from ._fs_audit import AuditRow as AuditRow
from ._fs_backend import btrfs_available as btrfs_available
from ._fs_client import FsClient as FsClient
from ._fs_client import FsWatch as FsWatch
from ._fs_client import fs as fs
from ._fs_config import FileServerConfig as FileServerConfig
from ._fs_errors import FsError as FsError
from ._fs_server import FileServer as FileServer
from ._fs_server import WatchRequest as WatchRequest
from ._fs_server import watch_subject as watch_subject
from ._fs_transfer import TransferRequest as TransferRequest
from ._fs_transfer import io_subject as io_subject
from ._fs_types import CopyResult as CopyResult
from ._fs_types import DirEntry as DirEntry
from ._fs_types import DirListing as DirListing
from ._fs_types import DuResult as DuResult
from ._fs_types import FileSystem as FileSystem
from ._fs_types import FileType as FileType
from ._fs_types import FindResult as FindResult
from ._fs_types import Listing as Listing
from ._fs_types import ListingEntry as ListingEntry
from ._fs_types import QuotaInfo as QuotaInfo
from ._fs_types import SearchMatch as SearchMatch
from ._fs_types import SearchResult as SearchResult
from ._fs_types import Snapshot as Snapshot
from ._fs_types import Stat as Stat
from ._fs_types import WatchEvent as WatchEvent
from ._fs_types import WriteResult as WriteResult

__all__ = [
    "AuditLog",
    "AuditRow",
    "CopyResult",
    "DirEntry",
    "DirListing",
    "DuResult",
    "FileServer",
    "FileServerActor",
    "FileServerConfig",
    "FileSystem",
    "FileType",
    "FindResult",
    "FsClient",
    "FsError",
    "FsWatch",
    "Listing",
    "ListingEntry",
    "QuotaInfo",
    "SearchMatch",
    "SearchResult",
    "Snapshot",
    "Stat",
    "TransferRequest",
    "WatchEvent",
    "WatchRequest",
    "WriteResult",
    "btrfs_available",
    "fs",
    "io_subject",
    "watch_subject",
]
