"""master: the control plane (DESIGN.md §8): accounts, hosts, placement, ``projects.*``, moves.

- :class:`MasterServer` (``conat master serve``): master's own bus with the auth callout (which
  also takes API keys), a SQLite database with versioned migrations, the account API
  (``master.account-<a>.api``) and host API (``master.host-<h>.api``) as one actor, a durable work
  queue of host actions, host liveness from keepalives, host providers (:class:`LocalProvider`).
- :func:`connect` and :class:`MasterApi`: a program's side, with an :class:`ApiKeyFile`.
- The wire types and typed interfaces are :mod:`conat.platform`'s (shared with the hosts, which
  master never imports: they talk over the bus).
"""

from ._client import ApiKeyCredentials as ApiKeyCredentials
from ._client import ApiKeyFile as ApiKeyFile
from ._client import MasterApi as MasterApi
from ._client import connect as connect
from ._config import MasterConfig as MasterConfig
from ._errors import AlreadyRunning as AlreadyRunning
from ._errors import Busy as Busy
from ._errors import HostFailed as HostFailed
from ._errors import HostOffline as HostOffline
from ._errors import MasterError as MasterError
from ._errors import MasterLocked as MasterLocked
from ._errors import MoveFailed as MoveFailed
from ._errors import NoCapacity as NoCapacity
from ._errors import NoHost as NoHost
from ._errors import NotAllowed as NotAllowed
from ._errors import SchemaTooNew as SchemaTooNew
from ._errors import UnknownAccount as UnknownAccount
from ._errors import UnknownApiKey as UnknownApiKey
from ._errors import UnknownHost as UnknownHost
from ._errors import UnknownProject as UnknownProject
from ._errors import WrongState as WrongState
from ._local_provider import LocalProvider as LocalProvider
from ._placement import Candidate as Candidate
from ._placement import Placement as Placement
from ._placement import place as place
from ._providers import HostProvider as HostProvider
from ._providers import ProviderCapabilities as ProviderCapabilities
from ._providers import ProviderHost as ProviderHost
from ._schema import MIGRATIONS as MIGRATIONS
from ._server import MasterServer as MasterServer
from ._server import read_master_state as read_master_state

__all__ = [
    "AlreadyRunning",
    "ApiKeyCredentials",
    "ApiKeyFile",
    "Busy",
    "Candidate",
    "HostFailed",
    "HostOffline",
    "HostProvider",
    "LocalProvider",
    "MIGRATIONS",
    "MasterApi",
    "MasterConfig",
    "MasterError",
    "MasterLocked",
    "MasterServer",
    "MoveFailed",
    "NoCapacity",
    "NoHost",
    "NotAllowed",
    "Placement",
    "ProviderCapabilities",
    "ProviderHost",
    "SchemaTooNew",
    "UnknownAccount",
    "UnknownApiKey",
    "UnknownHost",
    "UnknownProject",
    "WrongState",
    "connect",
    "place",
    "read_master_state",
]
