"""The named statements of `server/db/sql/*.sql`: each projection is written once and used, and
every statement, projections expanded, is valid SQL against the migrated schema as the
application role (a typo in a rarely run statement fails here, not in production)."""

from __future__ import annotations

import re
from importlib import resources

import asyncpg
import pytest

from server.db import store
from tests.conftest import TestDatabase

PROJECTIONS = ("member", "task", "workspace", "document")


def _sql_text() -> str:
    files = resources.files("server.db.sql").iterdir()
    return "\n".join(f.read_text() for f in files if f.name.endswith(".sql"))


def test_each_projection_is_defined_once_and_used_by_name() -> None:
    text = _sql_text()
    for name in PROJECTIONS:
        assert len(re.findall(rf"^-- projection: {name}$", text, re.MULTILINE)) == 1, name
        assert f"{{{name}}}" in text, f"projection {name} is used by no statement"
    expanded = "\n".join(store.Q.values())
    assert not re.search(r"\{(%s)\}" % "|".join(PROJECTIONS), expanded)
    task_columns = "coalesce(timeout_seconds, 3600) AS timeout_s"
    assert text.count(task_columns) == 1 and expanded.count(task_columns) >= 5


async def test_every_statement_prepares_as_the_application_role(db: TestDatabase) -> None:
    conn = await asyncpg.connect(db.app_url)
    try:
        failures = {}
        for name, sql in store.Q.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                failures[name] = repr(exc)
        assert failures == {}
    finally:
        await conn.close()


def test_a_prefixed_projection_renames_every_column_and_keeps_its_expressions() -> None:
    projection = "id AS task_id, title, coalesce(priority, 'normal') AS priority, status::text AS status"
    assert store._prefixed(projection, "x_") == (
        "id AS x_task_id, title AS x_title, coalesce(priority, 'normal') AS x_priority, status::text AS x_status"
    )
    # A column without a name cannot be prefixed: refused when the statements load.
    with pytest.raises(RuntimeError, match=r"count\(\*\)"):
        store._prefixed("id, count(*)", "x_")
    # The engine's transition reads its execution's columns through one, so `execution` is written once.
    assert "x_step_results" in store.Q["task_apply_transition"]
    assert "-- projection: execution" in _sql_text() and _sql_text().count("step_results::text AS") == 1
