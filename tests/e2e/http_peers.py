"""What the HTTP API tests share: a `tandem serve` with a small body limit, an HTTP client on
its /v1, tokens as bearer headers, a document an SDK agent edited in five steps, and the check
that a response is a typed problem."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, admin_fetch
from tests.serverproc import REPO

if (
    str(REPO / "clients") not in sys.path
):  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402


PROBLEM = "application/problem+json"
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
MAX_BODY = 4096


def bearer(agent: str, tenant: uuid.UUID = TENANT_A, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {wsclient.token(tenant, agent, **kwargs)}"}


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start(TANDEM_HTTP_MAX_BODY_BYTES=str(MAX_BODY))
    yield module_tandem


@pytest.fixture
async def http(server: Tandem) -> AsyncIterator[httpx.AsyncClient]:
    assert server.server is not None
    async with httpx.AsyncClient(
        base_url=f"{server.server.base_url}/v1", timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def edited(server: Tandem) -> dict[str, Any]:
    """Alice's team workspace with one document she edited in five acknowledged steps over /ws."""
    assert server.server is not None
    url = f"ws://{server.server.host}:{server.server.port}/ws"
    async with tandem_client.connect(
        url, wsclient.token(TENANT_A, "alice"), **FAST
    ) as alice:
        info = await alice.create_workspace("HTTP", visibility="team")
        ws = await alice.join(info.workspace_id)
        doc = await ws.open("notes")
        texts = [""]
        for word in ("Hello", ", world", "!", " Bye", "."):
            doc.text.insert(len(doc.text), word)
            await doc.flushed(10)
            texts.append(str(doc.text))
            await asyncio.sleep(0.01)  # distinct commit times for ?at=
        assert doc.seq == 5
    return {"workspace_id": info.workspace_id, "doc_id": doc.doc_id, "texts": texts}


def doc_path(edited: dict[str, Any], tail: str = "") -> str:
    return f"/workspaces/{edited['workspace_id']}/documents/{edited['doc_id']}{tail}"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert (
        body["type"] == f"urn:tandem:error:{code}" and body["title"] and body["detail"]
    )
    return body


async def run(
    command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """A `tandem` command, off the event loop (the server answers meanwhile)."""
    return await asyncio.to_thread(
        subprocess.run,
        command,
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )


async def count(server: Tandem, table: str) -> int:
    rows = await admin_fetch(
        server.db, f"SELECT count(*) AS n FROM {table}"
    )  # a constant table name
    return int(rows[0]["n"])
