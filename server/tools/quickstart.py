"""`tandem quickstart`: a demo workspace and text document, a token for an agent, and ready-to-paste
snippets (a Python SDK program and a browser editor page) that edit that document together.

Reuses what an earlier run made: the oldest live workspace of that name the agent owns, and the
oldest live document of that title in it. The database is reached like every command's
(server/tools/admin.py: DATABASE_URL, else the running server's embedded PostgreSQL); the token is
made like `tandem token issue`'s. The snippets are built in server/welcome.py.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer

from server import listen, welcome
from server.db import store
from server.tools import admin
from server.tools.cli_shared import DataDir, fail, out, run_admin, settings_from
from server.workspaces import directory

DEMO_AGENT = "demo-agent"
DEMO_WORKSPACE = "demo"
DEMO_DOCUMENT = "Welcome"
# Past this many workspaces of the agent (or documents of the workspace) an earlier demo is not
# looked for and a new one is made.
LOOKUP_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Demo:
    workspace: directory.Workspace
    document: directory.DocumentInfo
    created_workspace: bool
    created_document: bool


async def ensure_demo(pool: asyncpg.Pool, tenant_id: uuid.UUID, agent_id: str, name: str, title: str) -> Demo:
    """The agent's workspace `name` with a text document `title`: found, else created (one
    transaction, audited as the operator)."""
    with admin.explained(tenant_id, None, agent_id):
        async with store.tenant_transaction(pool, tenant_id, admin.ACTOR) as conn:
            owned, _ = await directory.list_workspaces(conn, agent_id, LOOKUP_LIMIT)
            workspace = next((w for w in owned if w.name == name and w.owner_id == agent_id), None)
            new_workspace = workspace is None
            if workspace is None:
                workspace = await directory.create_workspace(conn, tenant_id, agent_id, name, "general", "private", 100)
            documents, _ = await directory.list_documents(conn, workspace.workspace_id, LOOKUP_LIMIT)
            document = next((d for d in documents if d.title == title and d.content_type == "text"), None)
            new_document = document is None
            if document is None:
                document = await directory.create_document(conn, agent_id, workspace.workspace_id, title, "text", None)
    return Demo(workspace, document, new_workspace, new_document)


def quickstart_command(
    tenant: Annotated[
        uuid.UUID, typer.Option("--tenant", help="Tenant id (a UUID); default: the embedded server's dev tenant.")
    ] = welcome.DEV_TENANT,
    agent: Annotated[
        str, typer.Option("--agent", parser=admin.check_agent_id, metavar="AGENT", help="Agent the token is for.")
    ] = DEMO_AGENT,
    name: Annotated[str, typer.Option("--workspace-name", metavar="NAME", help="Name of the demo workspace.")] = (
        DEMO_WORKSPACE
    ),
    title: Annotated[str, typer.Option("--title", metavar="TITLE", help="Title of the demo document.")] = DEMO_DOCUMENT,
    ttl: Annotated[
        float | None,
        typer.Option(parser=admin.parse_ttl, metavar="TTL", help="Token lifetime: 30s, 15m, 1h, 2d (default 1h)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Server host for the URLs (env TANDEM_HOST; default: the running server's).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Server port for the URLs (env TANDEM_PORT; default: the running server's).")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", metavar="PATH", help="Also write the browser editor page to PATH.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Make (or reuse) a demo workspace and text document, and print a token and the snippets that
    join it: a Python SDK program and a browser editor page (yjs and y-websocket from esm.sh).

    Works beside a running `tandem serve` on the same data folder, or with DATABASE_URL. The URLs
    name where the embedded server of the data folder listens (its server.json) unless a host or
    port is given.
    """
    if not 1 <= len(name) <= 255 or not 1 <= len(title) <= 255:
        raise typer.BadParameter("must be 1 to 255 characters", param_hint="--workspace-name/--title")
    settings = settings_from(host=host, port=port, data_dir=data_dir)
    ttl_s = settings.token_ttl_s if ttl is None else ttl
    issued = datetime.now(UTC)
    try:
        token = admin.issue_token(settings, tenant, agent, ttl_s, now=issued)
    except admin.AdminError as exc:
        fail(str(exc))

    async def action(pool: asyncpg.Pool) -> Demo:
        return await ensure_demo(pool, tenant, agent, name, title)

    demo = run_admin(settings, action)
    urls = server_urls(settings.host, settings.port, settings.data_dir, given=host is not None or port is not None)
    ws_id, doc_id = demo.workspace.workspace_id, demo.document.doc_id
    script = welcome.sdk_script(urls, token, ws_id, doc_id)
    page = welcome.browser_html(urls, token, ws_id, doc_id)
    if html is not None:
        try:
            html.write_text(page)
        except OSError as exc:
            fail(f"cannot write {html}: {exc.strerror or exc}")
    facts = Facts(tenant, agent, demo, urls, token, welcome.expiry(ttl_s, issued), script, page, html)
    out(json.dumps(facts.to_json()) if as_json else facts.text())


def server_urls(host: str, port: int, data_dir: Path, *, given: bool) -> welcome.Urls:
    """The URLs of the server running on `data_dir` (its record, server/listen.py) when neither
    --host/--port nor TANDEM_HOST/TANDEM_PORT says otherwise; else of `host:port`."""
    if not given and "TANDEM_HOST" not in os.environ and "TANDEM_PORT" not in os.environ:
        running = listen.recorded(data_dir)
        if running is not None:
            return welcome.Urls.of(running.host, running.port)
    return welcome.Urls.of(host, port)


def made(created: bool) -> str:
    return "created" if created else "reused"


@dataclass(frozen=True, slots=True)
class Facts:
    """What quickstart prints, as JSON or as text to read and paste from."""

    tenant_id: uuid.UUID
    agent_id: str
    demo: Demo
    urls: welcome.Urls
    token: str
    expires_at: datetime
    sdk: str
    html: str
    html_path: Path | None

    def to_json(self) -> dict[str, Any]:
        ws_id, doc_id = self.demo.workspace.workspace_id, self.demo.document.doc_id
        return {
            "tenant_id": str(self.tenant_id),
            "agent_id": self.agent_id,
            "workspace_id": str(ws_id),
            "doc_id": str(doc_id),
            "created": {"workspace": self.demo.created_workspace, "document": self.demo.created_document},
            "token": self.token,
            "expires_at": welcome.iso(self.expires_at),
            # y-websocket's serverUrl and room: the provider connects to `{yjs}/{yjs_room}`.
            "urls": {"ws": self.urls.agent, "yjs": self.urls.yjs_server(ws_id), "yjs_room": str(doc_id)},
            "sdk": self.sdk,
            "html": self.html,
            "html_path": str(self.html_path) if self.html_path is not None else None,
        }

    def text(self) -> str:
        ws, doc = self.demo.workspace, self.demo.document
        page = (
            f"written to {self.html_path}: open it in a browser"
            if self.html_path is not None
            else "save as demo.html and open it in a browser (or pass --html demo.html)"
        )
        return "\n".join(
            [
                f"workspace {ws.workspace_id} ({ws.name!r}, {made(self.demo.created_workspace)})",
                f"document  {doc.doc_id} ({doc.title!r}, {made(self.demo.created_document)})",
                f"token for {self.agent_id} (tenant {self.tenant_id}; expires {welcome.iso(self.expires_at)}):",
                f"  {self.token}",
                f"agents:      {self.urls.agent}",
                f"Yjs editors: {self.urls.yjs_server(ws.workspace_id)}  room {doc.doc_id}",
                "",
                "# --- Python SDK: save as demo.py; .venv/bin/pip install ./clients; .venv/bin/python demo.py ---",
                self.sdk.rstrip("\n"),
                "",
                f"<!-- --- browser editor: {page} --- -->",
                self.html.rstrip("\n"),
            ]
        )
