"""A refused token says why: the server logs the class of the problem (never the token or the
secret) and the close reason names it, on /ws and /yjs (docs/protocol.md#22)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from server.core import auth
from tests import wsclient
from tests.serverproc import Servers, server_env, servers_for

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

SERVER_SECRET = "server-secret-" + "s" * 32
OTHER_SECRET = "another-secret-" + "o" * 32


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from servers_for(tmp_path)


async def test_a_token_signed_with_another_secret_is_refused_with_its_class(servers: Servers, db: TestDatabase) -> None:
    server = servers.start(
        env=server_env(DATABASE_URL=db.admin_url, TANDEM_JWT_SECRET=SERVER_SECRET, TANDEM_JWT_AUDIENCE="agents")
    )
    ws_url = server.base_url.replace("http", "ws", 1)
    forged = auth.issue_token(OTHER_SECRET, uuid.uuid4(), "mallory", 3600, audience="agents")
    elsewhere = auth.issue_token(SERVER_SECRET, uuid.uuid4(), "eve", 3600, audience="others")

    refusal = await wsclient.refused(f"{ws_url}/ws", forged)
    assert (refusal.code, refusal.reason) == (4401, "unauthorized: bad_signature")
    error, closing = refusal.frames
    assert (error["code"], error["details"]) == ("unauthorized", {"reason": "bad_signature"})
    assert (closing["code"], closing["reason"]) == (4401, "unauthorized")

    yjs = await wsclient.refused(f"{ws_url}/yjs/{uuid.uuid4()}/{uuid.uuid4()}", forged)
    assert (yjs.frames, yjs.code, yjs.reason) == ([], 4401, "unauthorized: bad_signature")
    assert (await wsclient.refused(f"{ws_url}/ws", elsewhere)).reason == "unauthorized: wrong_audience"
    assert (await wsclient.refused(f"{ws_url}/ws", "not-a-jwt")).reason == "unauthorized: malformed"
    assert (await wsclient.refused(f"{ws_url}/ws", None)).reason == "unauthorized: missing"

    log = server.log_text()
    assert log.count('"event": "auth.refused"') == 5
    assert '"reason": "bad_signature"' in log and '"reason": "wrong_audience"' in log
    for secret_or_token in (SERVER_SECRET, OTHER_SECRET, forged, elsewhere):
        assert secret_or_token not in log


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (auth.issue_token(SERVER_SECRET, uuid.uuid4(), "a", -60), auth.RefusalReason.EXPIRED),
        (auth.issue_token(OTHER_SECRET, uuid.uuid4(), "a", 60), auth.RefusalReason.BAD_SIGNATURE),
        (auth.issue_token(SERVER_SECRET, uuid.uuid4(), "a", 60, issuer="x"), auth.RefusalReason.WRONG_ISSUER),
        ("a.b.c", auth.RefusalReason.MALFORMED),
        ("", auth.RefusalReason.MISSING),
        ("x" * 9000, auth.RefusalReason.TOO_LONG),
    ],
)
def test_check_token_names_the_class(token: str, reason: auth.RefusalReason) -> None:
    verdict = auth.check_token(SERVER_SECRET, token, issuer="tandem" if reason is auth.RefusalReason.WRONG_ISSUER else None)
    assert isinstance(verdict, auth.Refusal) and verdict.reason is reason
    assert verdict.code.value == ("token_expired" if reason is auth.RefusalReason.EXPIRED else "unauthorized")
