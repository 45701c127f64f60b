"""Tokens against docs/protocol.md#2-connecting-and-authentication: real PyJWT, real files, no network."""

from __future__ import annotations

import os
import stat
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from server.core import auth
from server.core.auth import Principal, issue_token, verify_token
from server.core.errors import ErrorCode

SECRET = "s" * 56 + "-test-secret"  # 64 bytes: long enough for HS512 too
TENANT = uuid.UUID("00000000-0000-0000-0000-00000000000a")
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def signed(claims: dict, secret: str = SECRET, algorithm: str = "HS256", **kwargs) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, **kwargs)


def claims(**overrides) -> dict:
    base = {"tenant": str(TENANT), "sub": "writer-1", "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 60}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_issue_and_verify_round_trip():
    # docs/protocol.md#21-tokens
    token = issue_token(SECRET, TENANT, "writer-1", ttl_s=600, scopes=["docs:write", "docs:read"], now=NOW)
    verified = verify_token(SECRET, token, now=NOW + timedelta(seconds=599))
    assert isinstance(verified, Principal) and verified.jti is not None
    assert verified == Principal(
        tenant_id=TENANT,
        agent_id="writer-1",
        scopes=frozenset({"docs:write", "docs:read"}),
        expires_at=NOW + timedelta(seconds=600),
        jti=verified.jti,
        issued_at=NOW.timestamp(),
    )


def test_each_issued_token_has_its_own_id_and_tokens_without_one_still_verify():
    # docs/protocol.md#21-tokens (jti: optional; tandem token issue always sets one)
    first, second = (verify_token(SECRET, issue_token(SECRET, TENANT, "a", ttl_s=60, now=NOW), now=NOW) for _ in range(2))
    assert isinstance(first, Principal) and isinstance(second, Principal)
    assert first.jti is not None and second.jti is not None and first.jti != second.jti
    older = verify_token(SECRET, signed(claims()), now=NOW)
    assert isinstance(older, Principal) and older.jti is None and older.issued_at == NOW.timestamp()


def test_a_jti_that_is_not_a_uuid_is_invalid_claims():
    refused = auth.check_token(SECRET, signed(claims(jti="token-7")), now=NOW)
    assert isinstance(refused, auth.Refusal)
    assert (refused.code, refused.reason) == (ErrorCode.UNAUTHORIZED, auth.RefusalReason.INVALID_CLAIMS)


def test_scopes_are_optional():
    # docs/protocol.md#21-tokens (scopes: optional list of strings)
    principal = verify_token(SECRET, issue_token(SECRET, TENANT, "a", ttl_s=60, now=NOW), now=NOW)
    assert isinstance(principal, Principal) and principal.scopes == frozenset()


def test_expired_token_gets_token_expired():
    # docs/protocol.md#22-refusal-accept-then-close-with-a-reason (token_expired, 4440)
    token = issue_token(SECRET, TENANT, "writer-1", ttl_s=60, now=NOW)
    expiry = NOW + timedelta(seconds=60)
    assert verify_token(SECRET, token, now=expiry + timedelta(seconds=6), leeway_s=5) is ErrorCode.TOKEN_EXPIRED
    assert isinstance(verify_token(SECRET, token, now=expiry + timedelta(seconds=4), leeway_s=5), Principal)
    assert verify_token(SECRET, token, now=expiry, leeway_s=0) is ErrorCode.TOKEN_EXPIRED
    assert ErrorCode.TOKEN_EXPIRED.close_code == 4440


def test_bad_signature_gets_unauthorized():
    # docs/protocol.md#22-refusal-accept-then-close-with-a-reason (unauthorized, 4401)
    token = issue_token(SECRET, TENANT, "writer-1", ttl_s=60, now=NOW)
    assert verify_token("o" * 32 + "-other-secret", token, now=NOW) is ErrorCode.UNAUTHORIZED
    header, payload, signature = token.split(".")
    forged = signed(claims(tenant=str(uuid.uuid4())), secret="f" * 40).split(".")[1]
    assert verify_token(SECRET, f"{header}.{forged}.{signature}", now=NOW) is ErrorCode.UNAUTHORIZED
    assert ErrorCode.UNAUTHORIZED.close_code == 4401


def test_expired_token_with_bad_signature_is_unauthorized_not_expired():
    # docs/protocol.md#22: the signature is checked first; expiry says nothing to a forger
    token = signed(claims(exp=int(NOW.timestamp()) - 3600), secret="f" * 40)
    assert verify_token(SECRET, token, now=NOW) is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "a.b", "Bearer x", "é.é.é", "x" * 10_000])
def test_garbage_gets_unauthorized(token):
    # docs/protocol.md#22-refusal-accept-then-close-with-a-reason
    assert verify_token(SECRET, token, now=NOW) is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize(
    "bad",
    [
        {"tenant": None},
        {"sub": None},
        {"exp": None},
        {"iat": None},
        {"tenant": "not-a-uuid-not-a-uuid-not-a-uuid-1"},
        {"tenant": 5},
        {"sub": ""},
        {"sub": "x" * 256},
        {"sub": 7},
        {"sub": "writer\x00"},
        {"exp": "tomorrow"},
        {"exp": True},
        {"exp": float("nan")},
        {"exp": 10**20},
        {"scopes": "docs:write"},
        {"scopes": [1, 2]},
    ],
)
def test_missing_or_mistyped_claims_get_unauthorized(bad):
    # docs/protocol.md#21-tokens (claims table)
    assert verify_token(SECRET, signed(claims(**bad)), now=NOW) is ErrorCode.UNAUTHORIZED


def test_future_iat_or_nbf_gets_unauthorized():
    # docs/protocol.md#21-tokens (iat must not lie in the future; nbf)
    future = int(NOW.timestamp()) + 60
    assert verify_token(SECRET, signed(claims(iat=future, exp=future + 60)), now=NOW) is ErrorCode.UNAUTHORIZED
    assert verify_token(SECRET, signed(claims(nbf=future)), now=NOW) is ErrorCode.UNAUTHORIZED
    assert isinstance(verify_token(SECRET, signed(claims(nbf=int(NOW.timestamp()) + 3)), now=NOW), Principal)


def test_none_algorithm_is_refused():
    # docs/protocol.md#21-tokens: algorithms other than HS256, including none, are refused
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert unsigned.endswith(".")
    assert verify_token(SECRET, unsigned, now=NOW) is ErrorCode.UNAUTHORIZED


def test_other_hmac_algorithm_is_refused():
    # docs/protocol.md#21-tokens: only HS256, even with the right secret
    assert verify_token(SECRET, signed(claims(), algorithm="HS512"), now=NOW) is ErrorCode.UNAUTHORIZED


def test_issuer_and_audience_are_checked_when_configured():
    # docs/protocol.md#21-tokens (iss, aud: if configured)
    good = issue_token(SECRET, TENANT, "a", ttl_s=60, now=NOW, issuer="tandem", audience="tandem-ws")
    assert isinstance(verify_token(SECRET, good, now=NOW, issuer="tandem", audience="tandem-ws"), Principal)
    assert verify_token(SECRET, good, now=NOW, issuer="other") is ErrorCode.UNAUTHORIZED
    assert verify_token(SECRET, good, now=NOW, audience="other") is ErrorCode.UNAUTHORIZED
    bare = issue_token(SECRET, TENANT, "a", ttl_s=60, now=NOW)
    assert verify_token(SECRET, bare, now=NOW, issuer="tandem") is ErrorCode.UNAUTHORIZED
    assert verify_token(SECRET, bare, now=NOW, audience="tandem-ws") is ErrorCode.UNAUTHORIZED
    assert isinstance(verify_token(SECRET, good, now=NOW), Principal)  # not configured: not checked


def test_oversized_token_is_refused_unread():
    # docs/protocol.md#7-limits (max_token_bytes)
    token = issue_token(SECRET, TENANT, "a", ttl_s=60, scopes=[f"scope-{i}" for i in range(40)], now=NOW)
    assert isinstance(verify_token(SECRET, token, now=NOW), Principal)
    assert verify_token(SECRET, token, now=NOW, max_token_bytes=len(token) - 1) is ErrorCode.UNAUTHORIZED


def test_short_secret_is_a_configuration_error():
    # docs/protocol.md#21-tokens: HS256 keys of at least 32 bytes (RFC 7518 3.2)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        issue_token("short", TENANT, "a", ttl_s=60)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        verify_token("short", "a.b.c")


def test_token_from_request_prefers_the_bearer_header():
    # docs/protocol.md#21-tokens (Authorization header or ?token=; the header wins)
    assert auth.token_from_request({"token": "q"}, {"authorization": "Bearer h"}) == "h"
    assert auth.token_from_request({"token": "q"}, {"authorization": "bearer  h "}) == "h"
    assert auth.token_from_request({"token": "q"}, {}) == "q"
    assert auth.token_from_request({}, {"authorization": "Basic dXNlcjpwYXNz"}) is None
    assert auth.token_from_request({"token": ""}, {"authorization": "Bearer "}) is None
    assert auth.token_from_request({}, {}) is None


def test_secret_is_created_with_0600_and_reused(tmp_path):
    # docs/protocol.md#21-tokens (<data_dir>/jwt_secret, mode 0600)
    data_dir = tmp_path / "data"
    first = auth.load_or_create_secret(data_dir)
    path = data_dir / auth.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.encode()) >= auth.MIN_SECRET_BYTES
    assert auth.load_or_create_secret(data_dir) == first
    assert sorted(p.name for p in data_dir.iterdir()) == [auth.SECRET_FILE]  # no temp file left
    token = issue_token(first, TENANT, "a", ttl_s=60, now=NOW)
    assert isinstance(verify_token(auth.load_or_create_secret(data_dir), token, now=NOW), Principal)


def test_secret_file_readable_by_others_is_refused(tmp_path):
    # docs/protocol.md#21-tokens: the secret file must stay private
    auth.load_or_create_secret(tmp_path)
    os.chmod(tmp_path / auth.SECRET_FILE, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        auth.load_or_create_secret(tmp_path)


def test_configured_secret_wins_over_the_file(tmp_path):
    # docs/protocol.md#21-tokens (TANDEM_JWT_SECRET; when unset, the data dir)
    assert auth.resolve_secret(SECRET, tmp_path) == SECRET
    assert not (tmp_path / auth.SECRET_FILE).exists()
    assert auth.resolve_secret(None, tmp_path) == auth.load_or_create_secret(tmp_path)
    with pytest.raises(ValueError):
        auth.resolve_secret("short", tmp_path)
