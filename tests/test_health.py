"""/healthz and /metrics report the write path, the supervised tasks and Redis (server/health.py).

The app runs in process through its own lifespan against this test's database, and is asked
over ASGI. A document row held by the test makes the committer's append wait: while an update
waits longer than `commit_unavailable_after_s`, /healthz answers 503 although `SELECT 1` works.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from server.app import create_app
from server.db import store
from server.db.pgcluster import free_port
from tests.conftest import TENANT_A
from tests.test_committer_outage import make_document, row_locked

if TYPE_CHECKING:
    from tests.conftest import Postgres, TestDatabase

DEADLINE_S = 30.0
NODE_TASKS = {"committer-0", "committer-1", "rooms.janitor", "tasks.sweep", "fanout.listen", "db.maintenance"}


async def poll_health(http: httpx.AsyncClient, status_code: int) -> dict[str, Any]:
    """GET /healthz until it answers `status_code`, under a deadline."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            response = await http.get("/healthz")
            if response.status_code == status_code:
                return response.json()
            await asyncio.sleep(0.02)


async def test_healthz_shows_the_write_path_and_answers_503_while_it_cannot_commit(
    postgres: Postgres, db: TestDatabase, tmp_path: Path
) -> None:
    settings = postgres.settings.model_copy(
        update={
            "database_url": db.admin_url, "data_dir": tmp_path, "node_id": "node-health", "validate_in_worker": False,
            "commit_timeout_s": 30.0, "commit_unavailable_after_s": 0.3,
        }
    )  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tandem") as http:
            body = await poll_health(http, 200)
            assert body["status"] == "ok" and body["database"]["up"] is True
            assert body["write_path"]["ok"] is True
            assert [s["shard"] for s in body["write_path"]["shards"]] == [0, 1]
            assert set(body["write_path"]["shards"][0]) == {
                "shard", "ok", "connected", "queued", "oldest_wait_s", "since_commit_s", "since_error_s", "last_error",
            }  # fmt: skip
            assert NODE_TASKS <= set(body["tasks"])
            assert all(t == {"up": True, "restarts": 0, "last_error": None} for t in body["tasks"].values())

            state = app.state.tandem
            doc_id = await make_document(state.database.pool)
            outcome: list[tuple[int | None, BaseException | None]] = []
            async with row_locked(db, doc_id):
                op = store.NewOperation("writer", "insert", "{}", b"held")
                await state.node.committer.enqueue(TENANT_A, doc_id, op, lambda seq, exc: outcome.append((seq, exc)))
                body = await poll_health(http, 503)
                assert body["status"] == "unavailable"
                assert body["database"]["up"] is True  # the database answers; the write path does not
                assert body["write_path"]["ok"] is False
                stuck = [s for s in body["write_path"]["shards"] if not s["ok"]]
                assert len(stuck) == 1 and stuck[0]["queued"] == 1 and stuck[0]["oldest_wait_s"] >= 0.3
                assert stuck[0]["connected"] is True
                metrics = (await http.get("/metrics")).text
                assert f'tandem_commit_shard_up{{shard="{stuck[0]["shard"]}"}} 0.0' in metrics
                assert f'tandem_commit_queued_operations{{shard="{stuck[0]["shard"]}"}} 1.0' in metrics
            body = await poll_health(http, 200)  # the row is free: the append commits
            assert outcome == [(1, None)]
            shard = body["write_path"]["shards"][stuck[0]["shard"]]
            assert shard["ok"] is True and shard["queued"] == 0 and shard["since_commit_s"] is not None
            metrics = (await http.get("/metrics")).text
            assert all(f'tandem_task_up{{task="{name}"}} 1.0' in metrics for name in NODE_TASKS)


@pytest.mark.parametrize("redis", ["unset", "unreachable"])
async def test_redis_up_is_exported_only_when_redis_is_configured(
    redis: str, postgres: Postgres, db: TestDatabase, tmp_path: Path
) -> None:
    """Without REDIS_URL there is no Redis to be down: `tandem_redis_up` is absent and
    `tandem_redis_configured` is 0; with a REDIS_URL nothing answers on, it is 0 (down)."""
    redis_url = None if redis == "unset" else f"redis://127.0.0.1:{free_port()}/0"
    settings = postgres.settings.model_copy(
        update={
            "database_url": db.admin_url, "data_dir": tmp_path, "node_id": "node-redis", "validate_in_worker": False,
            "redis_url": redis_url, "presence_timeout_s": 0.2,
        }
    )  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tandem") as http:
            body = await poll_health(http, 200)  # Redis never makes the node unhealthy
            metrics = (await http.get("/metrics")).text.splitlines()
    if redis == "unset":
        assert body["redis"] == {"configured": False, "up": None}
        assert "tandem_redis_configured 0.0" in metrics
        assert not [line for line in metrics if line.startswith("tandem_redis_up")]
    else:
        assert body["redis"] == {"configured": True, "up": False}
        assert "tandem_redis_configured 1.0" in metrics and "tandem_redis_up 0.0" in metrics
