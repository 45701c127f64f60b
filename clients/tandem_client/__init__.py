"""tandem-client: the async Python SDK of Tandem.

    async with tandem_client.connect(urls, token) as client:
        ws = await client.join(workspace_id)
        doc = await ws.open("spec")          # a pycrdt document, kept in sync both ways
        doc.text.insert(len(doc.text), "Hello")
        await doc.flushed()                   # the server has acknowledged every edit

Errors are typed: one class per wire error code (`NotFound`, `Forbidden`, `DocNotOpen`, ...),
all subclasses of `TandemError`. The wire protocol is the server's docs/protocol.md.
"""

__version__ = "0.1.0"

from tandem_client import errors  # noqa: E402
from tandem_client.client import Client, connect  # noqa: E402
from tandem_client.document import REMOTE, Document  # noqa: E402
from tandem_client.errors import *  # noqa: E402,F403  (one class per error code)
from tandem_client.options import Options  # noqa: E402
from tandem_client.wire import DocumentInfo, Hello, Member, WorkspaceInfo  # noqa: E402
from tandem_client.workspace import Workspace  # noqa: E402

__all__ = [
    "REMOTE",
    "Client",
    "Document",
    "DocumentInfo",
    "Hello",
    "Member",
    "Options",
    "Workspace",
    "WorkspaceInfo",
    "connect",
    "errors",
    *errors.__all__,
]
