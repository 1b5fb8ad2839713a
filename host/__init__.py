"""host: the project host: many projects on one machine, each a sandboxed process (docs/host.md).

- :class:`HostServer` (``conat host serve``): the host's own bus with the auth callout, persist,
  bootlogs, the runner and the file server, all as actors; reconciles projects after a restart.
- The file server (:class:`FileServer`, ``fs.project-<p>``) serves each project's tree over the bus:
  typed RPCs (:class:`FileSystem`), streamed transfers of any size and watch sockets, every path
  resolved beneath the project root by the kernel (:mod:`conat.beneath`). Clients use :func:`fs`.
- The runner (``runner.host-<h>``, master's alone): :class:`Runner` and one :class:`ProjectActor`
  per project driving the state machine of :mod:`host._states`; :func:`runner_proxy` calls it.
- A project process (``python -m host.project``) serves ``project.<p>.exec`` (:func:`exec_command`,
  :func:`exec_stream`) and ``project.<p>.status``, sandboxed by :mod:`host._isolation`: cgroups,
  rlimits, its own uid, a network namespace that reaches only the bus, a bubblewrap mount view.
- Activity (:func:`report_activity` on ``activity.project-<p>``) keeps a project from idle stop.
"""

from ._activity import activity_subject as activity_subject
from ._activity import report_activity as report_activity
from ._config import HostConfig as HostConfig
from ._errors import BadArgument as BadArgument
from ._errors import HostError as HostError
from ._errors import LaunchFailed as LaunchFailed
from ._errors import NoCredentials as NoCredentials
from ._errors import ProjectExists as ProjectExists
from ._errors import StoreChanged as StoreChanged
from ._errors import UnknownProject as UnknownProject
from ._errors import WrongState as WrongState
from ._exec import ExecResult as ExecResult
from ._exec import exec_command as exec_command
from ._exec import exec_stream as exec_stream
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
from ._runner import ProjectActor as ProjectActor
from ._runner import Runner as Runner
from ._runner import runner_proxy as runner_proxy
from ._server import HOST_SERVICES as HOST_SERVICES
from ._server import HostContext as HostContext
from ._server import HostServer as HostServer
from ._server import HostService as HostService
from ._states import EVENTS as EVENTS
from ._states import STATES as STATES
from ._states import TRANSITIONS as TRANSITIONS
from ._states import Event as Event
from ._states import ProjectState as ProjectState
from ._states import transition as transition
from ._wire import ExecExit as ExecExit
from ._wire import ExecOutput as ExecOutput
from ._wire import ExecRequest as ExecRequest
from ._wire import HostStatus as HostStatus
from ._wire import Isolation as Isolation
from ._wire import Limits as Limits
from ._wire import ProjectStatus as ProjectStatus
from ._wire import ProjectUsage as ProjectUsage

__all__ = [
    "AuditLog",
    "AuditRow",
    "BadArgument",
    "CopyResult",
    "DirEntry",
    "DirListing",
    "DuResult",
    "EVENTS",
    "Event",
    "ExecExit",
    "ExecOutput",
    "ExecRequest",
    "ExecResult",
    "FileServer",
    "FileServerActor",
    "FileServerConfig",
    "FileSystem",
    "FileType",
    "FindResult",
    "FsClient",
    "FsError",
    "FsWatch",
    "HOST_SERVICES",
    "HostConfig",
    "HostContext",
    "HostError",
    "HostServer",
    "HostService",
    "HostStatus",
    "Isolation",
    "LaunchFailed",
    "Limits",
    "Listing",
    "ListingEntry",
    "NoCredentials",
    "ProjectActor",
    "ProjectExists",
    "ProjectState",
    "ProjectStatus",
    "ProjectUsage",
    "QuotaInfo",
    "Runner",
    "STATES",
    "SearchMatch",
    "SearchResult",
    "Snapshot",
    "Stat",
    "StoreChanged",
    "TRANSITIONS",
    "TransferRequest",
    "UnknownProject",
    "WatchEvent",
    "WatchRequest",
    "WriteResult",
    "WrongState",
    "activity_subject",
    "btrfs_available",
    "exec_command",
    "exec_stream",
    "fs",
    "io_subject",
    "report_activity",
    "runner_proxy",
    "transition",
    "watch_subject",
]
