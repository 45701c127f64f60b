"""What a newcomer needs to connect: the endpoint URLs, a token with its expiry, SDK and
browser-editor snippets. Built here once for the start output (server/app.py) and for `tandem
quickstart` (server/tools/quickstart.py); pure text, no I/O beyond `announce`.

`announce` makes the one "terminal" decision: when the stream logs go to (stderr,
server/core/logs.py) is a terminal, the start output is a short readable block written there;
otherwise it is one `server.welcome` log line (JSON with TANDEM_LOG_JSON) carrying the same facts.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from server.core import auth
from server.core.logs import get_logger, log_stream
from server.core.settings import Settings

log = get_logger("tandem.welcome")

# The tenant of the embedded server's development token and of `tandem quickstart`'s demo.
DEV_TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEV_AGENT = "dev"
# A wildcard listen address is not a place to connect to: URLs name the loopback instead.
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}
# Pinned like tests/node/package.json, so the browser runs the Yjs the suite checks against.
YJS_VERSION = "13.6.33"
Y_WEBSOCKET_VERSION = "3.1.0"


def url_host(host: str) -> str:
    """`host` as it goes into a URL: a wildcard (0.0.0.0, ::) becomes 127.0.0.1, an IPv6
    address gets brackets."""
    if host in _WILDCARDS:
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


@dataclass(frozen=True, slots=True)
class Urls:
    """Where clients connect: the agent endpoint and the y-websocket endpoint (its template)."""

    base: str  # ws://HOST:PORT

    @classmethod
    def of(cls, host: str, port: int) -> Urls:
        return cls(f"ws://{url_host(host)}:{port}")

    @property
    def agent(self) -> str:
        return f"{self.base}/ws"

    @property
    def yjs_template(self) -> str:
        return f"{self.base}/yjs/{{workspace_id}}/{{doc_id}}"

    def yjs_server(self, workspace_id: uuid.UUID | str) -> str:
        """y-websocket's `serverUrl`; the room (the doc id) is appended by the provider."""
        return f"{self.base}/yjs/{workspace_id}"

    def to_json(self) -> dict[str, str]:
        return {"ws": self.agent, "yjs": self.yjs_template}


def expiry(ttl_s: float, now: datetime | None = None) -> datetime:
    """When a token issued now for `ttl_s` expires, to the second (as its `exp` claim)."""
    issued = now or datetime.now(UTC)
    return datetime.fromtimestamp(int((issued + timedelta(seconds=ttl_s)).timestamp()), UTC)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- snippets ------------------------------------------------------------------------------


def start_snippet(urls: Urls, token: str) -> list[str]:
    """Three lines for `.venv/bin/python -m asyncio` (top-level await) after `import
    tandem_client`: connect, make a scratch workspace, write into a document of it."""
    return [
        f"client = await tandem_client.connect({urls.agent!r}, {token!r})",
        'ws = await client.join((await client.create_workspace("scratch")).workspace_id)',
        'doc = await ws.open("notes"); doc.text.insert(len(doc.text), "Hello\\n"); await doc.flushed()',
    ]


def sdk_script(urls: Urls, token: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> str:
    """A whole Python program: join the workspace, append a line to the document, then wait for
    another client (the browser editor) to finish a line (one more newline, and the text ends
    with one, so the first keystroke does not end it) and print the text."""
    return f"""import asyncio

import tandem_client  # .venv/bin/pip install ./clients


async def main() -> None:
    async with tandem_client.connect({urls.agent!r}, {token!r}) as client:
        ws = await client.join({str(workspace_id)!r})
        doc = await ws.open({str(doc_id)!r})
        doc.text.insert(len(doc.text), "Hello from the Python SDK\\n")
        await doc.flushed()  # committed: every editor of the document now sees it
        lines = str(doc.text).count("\\n")
        print("waiting for another client to finish a line (type in the page, then Enter) ...", flush=True)
        # Done when a line was added and the text ends with it: not at the first keystroke.
        await doc.wait_for(
            lambda d: str(d.text).count("\\n") > lines and str(d.text).endswith("\\n"), timeout_s=600
        )
        print(doc.text, flush=True)


asyncio.run(main())
"""


def browser_html(urls: Urls, token: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> str:
    """One self-contained HTML page: a textarea bound to the document's "content" text through
    yjs and y-websocket from esm.sh (the same Y.Doc for both: `?deps=`)."""
    server = json.dumps(urls.yjs_server(workspace_id))
    return f"""<!doctype html>
<meta charset="utf-8">
<title>Tandem demo</title>
<p>Status: <span id="status">connecting</span></p>
<textarea id="editor" rows="20" cols="80"></textarea>
<script type="module">
import * as Y from 'https://esm.sh/yjs@{YJS_VERSION}'
import {{ WebsocketProvider }} from 'https://esm.sh/y-websocket@{Y_WEBSOCKET_VERSION}?deps=yjs@{YJS_VERSION}'

const ydoc = new Y.Doc()
const text = ydoc.getText('content')
const provider = new WebsocketProvider({server}, {json.dumps(str(doc_id))}, ydoc, {{ params: {{ token: {json.dumps(token)} }} }})
provider.on('status', (event) => {{ document.getElementById('status').textContent = event.status }})

const area = document.getElementById('editor')
text.observe(() => {{ if (area.value !== text.toString()) area.value = text.toString() }})
area.addEventListener('input', () => {{
  // Replace the changed middle: the longest common prefix and suffix stay untouched.
  const before = text.toString(), after = area.value
  let start = 0
  while (start < before.length && before[start] === after[start]) start++
  let end = 0
  while (end < before.length - start && before[before.length - 1 - end] === after[after.length - 1 - end]) end++
  ydoc.transact(() => {{
    text.delete(start, before.length - start - end)
    text.insert(start, after.slice(start, after.length - end))
  }})
}})
</script>
"""


# --- the start output ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """What the server says once it is ready. `token` only for the embedded server's dev token."""

    urls: Urls
    host_note: str | None  # set when the URLs name another host than the one listened on
    token: str | None = None
    expires_at: datetime | None = None
    tenant_id: uuid.UUID = DEV_TENANT
    agent_id: str = DEV_AGENT

    @property
    def sdk(self) -> list[str]:
        return start_snippet(self.urls, self.token or "TOKEN")

    def fields(self) -> dict[str, Any]:
        """The structured form: one `server.welcome` log line."""
        fields: dict[str, Any] = {"urls": self.urls.to_json(), "sdk": self.sdk, "next": "tandem quickstart"}
        if self.host_note:
            fields["host_note"] = self.host_note
        if self.token is not None and self.expires_at is not None:
            fields.update(
                token=self.token, expires_at=iso(self.expires_at),
                tenant_id=str(self.tenant_id), agent_id=self.agent_id,
            )  # fmt: skip
        return fields

    def text(self) -> str:
        """The readable form, for a terminal."""
        lines = [
            "",
            "Tandem is ready.",
            f"  agents (JSON protocol, the Python SDK):  {self.urls.agent}",
            f"  Yjs editors (y-websocket):              {self.urls.yjs_template}",
        ]
        if self.host_note:
            lines.append(f"  ({self.host_note})")
        if self.token is not None and self.expires_at is not None:
            lines += [
                f"  dev token (tenant {self.tenant_id}, agent {self.agent_id}; expires {iso(self.expires_at)}):",
                f"    {self.token}",
            ]
        else:
            lines.append("  tokens: tandem token issue --tenant T --agent A")
        lines += [
            "",
            "Try the SDK (.venv/bin/pip install ./clients; .venv/bin/python -m asyncio;",
            "then `import tandem_client` and paste):",
        ]
        lines += [f"  {line}" for line in self.sdk]
        lines += [
            "",
            "Next: `tandem quickstart` makes a demo workspace and document and prints the SDK lines",
            "and a browser editor that share it.",
            "",
        ]
        return "\n".join(lines)


def welcome(host: str, port: int, token: str | None = None, expires_at: datetime | None = None) -> Welcome:
    urls = Urls.of(host, port)
    shown = url_host(host)
    note = f"listening on {host or 'every address'}; the URLs use {shown}" if host in _WILDCARDS else None
    return Welcome(urls, note, token, expires_at)


def for_server(settings: Settings, secret: str, embedded: bool, now: datetime | None = None) -> Welcome:
    """The start output of a server: with the embedded default, a development token for
    `DEV_AGENT` of `DEV_TENANT` valid for `token_ttl_s` (an external database has real tenants:
    `tandem token issue` makes their tokens)."""
    if not embedded:
        return welcome(settings.host, settings.port)
    issued = now or datetime.now(UTC)
    token = auth.issue_token(
        secret, DEV_TENANT, DEV_AGENT, settings.token_ttl_s, now=issued,
        issuer=settings.jwt_issuer, audience=settings.jwt_audience,
    )  # fmt: skip
    return welcome(settings.host, settings.port, token, expiry(settings.token_ttl_s, issued))


def announce(message: Welcome, stream: TextIO | None = None) -> None:
    """The readable block on `stream` (default: where logs go) when it is a terminal, else one
    `server.welcome` log line."""
    stream = stream or log_stream()
    if stream.isatty():
        stream.write(message.text() + "\n")
        stream.flush()
    else:
        log.info("server.welcome", **message.fields())
