"""migrations/schema.sql is exactly what the migrations produce (server/tools/schema_dump.py).

The comparison runs `tandem schema dump` as a real process: a scratch PostgreSQL from the wheel,
every migration applied, pg_dump, normalised. The other tests are pure.
"""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path

from server.core.settings import load_settings
from server.db import migrate
from server.tools import schema_dump
from tests.serverproc import REPO, TANDEM, server_env

COMMAND_TIMEOUT_S = 180.0


def test_committed_schema_is_what_the_migrations_produce(tmp_path: Path) -> None:
    committed = load_settings().migrations_dir / schema_dump.SCHEMA_FILE
    fresh = tmp_path / "schema.sql"
    result = subprocess.run(
        [TANDEM, "schema", "dump", "--output", str(fresh)],
        check=False,
        env=server_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    expected, actual = committed.read_text(), fresh.read_text()
    diff = "".join(
        list(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "committed", "migrations"))[:80]
    )
    assert actual == expected, (
        f"migrations/{schema_dump.SCHEMA_FILE} is not what the migrations produce: "
        f"run `{schema_dump.COMMAND}` and commit the file.\n{diff}"
    )


def test_normalise_drops_pg_dump_noise_and_keeps_the_schema() -> None:
    dump = "\n".join(
        [
            r"\restrict AbC123xyz",
            "--",
            "-- PostgreSQL database dump",
            "--",
            "",
            "-- Dumped from database version 18.1",
            "-- Dumped by pg_dump version 18.1",
            "",
            "SET statement_timeout = 0;",
            "SET client_encoding = 'UTF8';",
            "SELECT pg_catalog.set_config('search_path', '', false);",
            "",
            "--",
            "-- Name: f(); Type: FUNCTION; Schema: public; Owner: -",
            "--",
            "",
            "CREATE FUNCTION public.f() RETURNS integer",
            "    LANGUAGE sql",
            "    AS $$",
            "    -- a comment of the migration's, kept",
            "    SELECT 1",
            "$$;   ",
            "",
            "",
            "",
            "GRANT ALL ON FUNCTION public.f() TO tandem_app;",
            "",
            "--",
            "-- PostgreSQL database dump complete",
            "--",
            r"\unrestrict AbC123xyz",
            "",
        ]
    )
    assert schema_dump.normalise(dump) == (
        "CREATE FUNCTION public.f() RETURNS integer\n"
        "    LANGUAGE sql\n"
        "    AS $$\n"
        "    -- a comment of the migration's, kept\n"
        "    SELECT 1\n"
        "$$;\n"
        "\n"
        "GRANT ALL ON FUNCTION public.f() TO tandem_app;\n"
    )


def test_the_schema_file_beside_the_migrations_is_not_a_migration() -> None:
    directory = load_settings().migrations_dir
    assert (directory / migrate.SCHEMA_FILE).exists()
    versions = [m.version for m in migrate.load(directory)]
    assert versions == sorted(p.name.split("_", 1)[0] for p in directory.glob("[0-9]*.sql"))
