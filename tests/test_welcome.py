"""The start output's two forms (server/welcome.py): a readable block on a terminal (a real pty
here), one `server.welcome` log line otherwise; URLs name a connectable host."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from datetime import UTC, datetime

import pytest

from server import welcome
from server.core import auth, logs
from server.core.settings import load_settings

SECRET = "welcome-test-secret-0123456789abcdef0123456789"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_terminal_form_shows_urls_the_token_with_its_expiry_and_three_sdk_lines() -> None:
    settings = load_settings(host="127.0.0.1", port=8123, token_ttl_s=3600)
    message = welcome.for_server(settings, SECRET, embedded=True, now=NOW)
    text = message.text()

    assert "ws://127.0.0.1:8123/ws" in text
    assert "ws://127.0.0.1:8123/yjs/{workspace_id}/{doc_id}" in text
    assert message.token is not None and f"    {message.token}\n" in text
    assert "expires 2030-01-02T04:04:05Z" in text
    sdk = [line.strip() for line in text.splitlines() if line.startswith("  ") and "await" in line]
    assert sdk == message.sdk and len(sdk) == 3
    assert "tandem quickstart" in text
    principal = auth.check_token(SECRET, message.token, NOW)
    assert isinstance(principal, auth.Principal)
    assert (principal.tenant_id, principal.agent_id, principal.expires_at) == (
        welcome.DEV_TENANT, "dev", message.expires_at,
    )  # fmt: skip


def test_with_an_external_database_there_is_no_dev_token_but_the_way_to_make_one() -> None:
    message = welcome.for_server(load_settings(port=8123), SECRET, embedded=False)
    assert message.token is None and "token" not in message.fields()
    assert "tandem token issue --tenant T --agent A" in message.text()
    assert "'TOKEN'" in message.sdk[0]


@pytest.mark.parametrize(
    ("host", "shown", "note"),
    [
        ("0.0.0.0", "127.0.0.1", True),
        ("::", "127.0.0.1", True),
        ("::1", "[::1]", False),
        ("example.org", "example.org", False),
    ],
)
def test_urls_name_a_host_one_can_connect_to(host: str, shown: str, note: bool) -> None:
    message = welcome.welcome(host, 9000)
    assert message.fields()["urls"]["ws"] == f"ws://{shown}:9000/ws"
    assert (f"the URLs use {shown}" in message.text()) is note


def test_on_a_terminal_the_block_is_written_there_and_otherwise_a_json_log_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = welcome.for_server(load_settings(port=8123), SECRET, embedded=True, now=NOW)
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal:
        welcome.announce(message, terminal)
    os.set_blocking(primary, False)
    shown = os.read(primary, 1 << 16).decode().replace("\r\n", "\n")
    os.close(primary)
    assert message.text() in shown
    assert not shown.lstrip().startswith("{")

    logs.configure("info", json=True)  # to pytest's stderr, which is not a terminal
    try:
        welcome.announce(message)
    finally:  # the handler would outlive this test's stderr
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "tandem"]:
            root.removeHandler(handler)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "server.welcome"
    assert line["token"] == message.token
    assert line["expires_at"] == "2030-01-02T04:04:05Z"
    assert line["urls"] == {"ws": "ws://127.0.0.1:8123/ws", "yjs": "ws://127.0.0.1:8123/yjs/{workspace_id}/{doc_id}"}


def test_the_start_output_goes_to_stderr_when_the_log_handler_s_stream_was_closed() -> None:
    # A program embedding the server (a test session, for one) may close the stream the log
    # handler was given; the start output must not fail the server's startup then.
    closed = io.StringIO()
    logs.configure("info", json=True)
    root = logging.getLogger()
    try:
        handler = next(h for h in root.handlers if h.get_name() == "tandem")
        handler.setStream(closed)
        closed.close()
        assert logs.log_stream() is sys.stderr
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "tandem"]:
            root.removeHandler(handler)
