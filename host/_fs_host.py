"""The file server as one of the host's services (:data:`host.HOST_SERVICES`).

It serves ``fs.project-<p>`` for every project home under the host's ``projects_dir`` (the
runner makes the homes), on the host's own bus and actor system; the host closes it at shutdown
(a service's returned handle).
Snapshots go under ``<data_dir>/fs-snapshots/<p>``, outside the project's tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._fs_config import FileServerConfig
from ._fs_server import FileServer

if TYPE_CHECKING:
    from ._server import HostContext

__all__ = ["start_file_server"]


async def start_file_server(ctx: HostContext) -> FileServer:
    """Start the file server; the host closes it at shutdown (it returns it)."""
    config = FileServerConfig(
        projects=str(ctx.projects_dir / "[project_id]"),
        snapshots=str(ctx.config.data / "fs-snapshots" / "[project_id]"),
    )
    return await FileServer(ctx.client, config, system=ctx.system).start()
