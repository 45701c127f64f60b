"""Tokens: the only module that knows their format (HS256 JWTs, docs/protocol.md#2-connecting-and-authentication).

`check_token` turns a token into a `Principal` or a `Refusal` (the error code and the class of
the problem: bad signature, expired, wrong audience, ...) and never raises for client input;
`verify_token` gives only the error code. `issue_token` makes one (tests, `tandem token issue`),
with a random `jti` so it can be revoked alone (server/core/revocations.py).
`load_or_create_secret` keeps the embedded/dev signing secret in the data dir (the server creates
it; `find_secret` only reads it). No I/O beyond that one file; no web framework here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID, uuid4

import jwt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from server.core.errors import ErrorCode
from server.core.settings import DATA_DIR_MODE

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
SECRET_FILE = "jwt_secret"
DEFAULT_LEEWAY_S = 5.0
DEFAULT_MAX_TOKEN_BYTES = 8192
_MAX_EPOCH_S = 253_402_300_799  # 9999-12-31T23:59:59Z: later times do not fit a datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a session acts for: everything the rest of the server knows about a token."""

    tenant_id: UUID
    agent_id: str
    scopes: frozenset[str]
    expires_at: datetime
    jti: UUID | None = None  # the token's id; tokens without one are revoked only per agent
    issued_at: float = 0.0  # `iat`, seconds since the epoch (per-agent revocation compares it)


class RefusalReason(StrEnum):
    """Why a token was refused: logged and named in the close reason. Never holds the token."""

    MISSING = "missing"
    TOO_LONG = "too_long"
    MALFORMED = "malformed"  # not a JWT
    WRONG_ALGORITHM = "wrong_algorithm"  # not HS256 (`none` included)
    BAD_SIGNATURE = "bad_signature"  # signed with another secret, or altered
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    INVALID_CLAIMS = "invalid_claims"  # missing or mistyped claims
    NOT_YET_VALID = "not_yet_valid"  # iat or nbf in the future
    EXPIRED = "expired"
    REVOKED = "revoked"  # its id or its agent revoked (server/core/revocations.py)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused token: the error code the client gets, and the class of the problem."""

    code: ErrorCode
    reason: RefusalReason

    @property
    def close_reason(self) -> str:
        """The WebSocket close reason: the error code, then the class (`unauthorized: bad_signature`);
        `token_expired` / `token_revoked` alone, as when that happens during a session."""
        if self.reason in (RefusalReason.EXPIRED, RefusalReason.REVOKED):
            return self.code.value
        return f"{self.code.value}: {self.reason.value}"

    def __str__(self) -> str:
        return self.close_reason


class SecretNotFound(LookupError):
    """No token secret is configured or kept in the data dir; the message says where we looked."""


_PYJWT_REASONS: tuple[tuple[type[jwt.PyJWTError], RefusalReason], ...] = (
    (jwt.InvalidSignatureError, RefusalReason.BAD_SIGNATURE),
    (jwt.InvalidAudienceError, RefusalReason.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, RefusalReason.WRONG_ISSUER),
    (jwt.MissingRequiredClaimError, RefusalReason.INVALID_CLAIMS),
    (jwt.DecodeError, RefusalReason.MALFORMED),
    (jwt.InvalidAlgorithmError, RefusalReason.WRONG_ALGORITHM),
)


def _refused(reason: RefusalReason) -> Refusal:
    code = ErrorCode.TOKEN_EXPIRED if reason is RefusalReason.EXPIRED else ErrorCode.UNAUTHORIZED
    return Refusal(code, reason)


class _Claims(BaseModel):
    """The claims Tandem reads; others (iss, aud, ...) are allowed and ignored here."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    tenant: Annotated[str, StringConstraints(min_length=32, max_length=36)]
    # Agent ids are stored; PostgreSQL text cannot hold NUL.
    sub: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00]+$")]
    exp: Annotated[int | float, Field(ge=0, le=_MAX_EPOCH_S)]
    iat: Annotated[int | float, Field(ge=0, le=_MAX_EPOCH_S)]
    nbf: Annotated[int | float, Field(ge=0, le=_MAX_EPOCH_S)] | None = None
    scopes: list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(default_factory=list, max_length=100)
    # Optional: tokens issued before ids existed still verify. When present, a UUID string.
    jti: Annotated[str, StringConstraints(min_length=32, max_length=36)] | None = None


def _check_secret(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes (TANDEM_JWT_SECRET)")
    return key


def issue_token(
    secret: str | bytes,
    tenant_id: UUID,
    agent_id: str,
    ttl_s: float,
    scopes: Iterable[str] = (),
    *,
    now: datetime | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A signed token for `agent_id` of `tenant_id`, valid for `ttl_s` seconds from `now`."""
    if not 1 <= len(agent_id) <= 255 or "\x00" in agent_id:
        raise ValueError("agent_id must be 1 to 255 characters, without NUL")
    issued = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "tenant": str(tenant_id),
        "sub": agent_id,
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=ttl_s)).timestamp()),
        "jti": str(uuid4()),
    }
    if scopes := list(scopes):
        claims["scopes"] = scopes
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, _check_secret(secret), algorithm=ALGORITHM)


def verify_token(
    secret: str | bytes,
    token: str | None,
    now: datetime | None = None,
    *,
    leeway_s: float = DEFAULT_LEEWAY_S,
    issuer: str | None = None,
    audience: str | None = None,
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
) -> Principal | ErrorCode:
    """The token's `Principal`, or `ErrorCode.TOKEN_EXPIRED` / `ErrorCode.UNAUTHORIZED` (see `check_token`)."""
    verdict = check_token(
        secret, token, now, leeway_s=leeway_s, issuer=issuer, audience=audience, max_token_bytes=max_token_bytes
    )
    return verdict.code if isinstance(verdict, Refusal) else verdict


def check_token(
    secret: str | bytes,
    token: str | None,
    now: datetime | None = None,
    *,
    leeway_s: float = DEFAULT_LEEWAY_S,
    issuer: str | None = None,
    audience: str | None = None,
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
) -> Principal | Refusal:
    """The token's `Principal`, or its `Refusal`: `token_expired` when `exp` has passed,
    `unauthorized` for every other class.

    The signature is checked first, so an expired token with a bad signature is `unauthorized`.
    Only HS256 is accepted (never `none`). `iss`/`aud` are required and checked only when
    configured. Times use `now` (default: the current time) with `leeway_s` of skew.
    """
    key = _check_secret(secret)
    if not token:
        return _refused(RefusalReason.MISSING)
    if len(token) > max_token_bytes:
        return _refused(RefusalReason.TOO_LONG)
    required = ["exp", "iat", "sub", "tenant"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            audience=audience,
            # Times are checked below against `now`, so tests and replays need no real clock.
            options={"require": required, "verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": audience is not None},
        )
    except jwt.PyJWTError as exc:
        reason = next((r for kind, r in _PYJWT_REASONS if isinstance(exc, kind)), RefusalReason.INVALID_CLAIMS)
        return _refused(reason)
    except (ValueError, TypeError):
        return _refused(RefusalReason.MALFORMED)
    try:
        claims = _Claims.model_validate(payload)
        tenant_id = UUID(claims.tenant)
        jti = None if claims.jti is None else UUID(claims.jti)
    except (ValidationError, ValueError, TypeError):
        return _refused(RefusalReason.INVALID_CLAIMS)
    at = (now or datetime.now(UTC)).timestamp()
    if claims.iat > at + leeway_s or (claims.nbf is not None and claims.nbf > at + leeway_s):
        return _refused(RefusalReason.NOT_YET_VALID)
    if claims.exp <= at - leeway_s:
        return _refused(RefusalReason.EXPIRED)
    return Principal(
        tenant_id=tenant_id,
        agent_id=claims.sub,
        scopes=frozenset(claims.scopes),
        expires_at=datetime.fromtimestamp(claims.exp, UTC),
        jti=jti,
        issued_at=float(claims.iat),
    )


def token_from_request(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The token a connect request presents: `Authorization: Bearer ...` wins over `?token=`.

    `headers` must be case-insensitive (as Starlette's are) or use lowercase names.
    """
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None
    return query.get("token") or None


def load_or_create_secret(data_dir: Path) -> str:
    """The signing secret kept in `<data_dir>/jwt_secret` (mode 0600), created on first use.

    Used only when `TANDEM_JWT_SECRET` is unset. Creation is atomic: concurrent first starts
    agree on one secret. A file readable by group or others, or too short, is refused.
    """
    data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    if not path.exists():
        tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(tmp, path)  # fails if another process won the race: use its secret
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others; run: chmod 600 {path}")
    secret = path.read_text().strip()
    _check_secret(secret)
    return secret


def resolve_secret(jwt_secret: str | None, data_dir: Path) -> str:
    """The server's secret: the configured one (`settings.jwt_secret`), else the one kept in the
    data dir, created on first use."""
    if jwt_secret:
        _check_secret(jwt_secret)
        return jwt_secret
    return load_or_create_secret(data_dir)


def find_secret(jwt_secret: str | None, data_dir: Path) -> str:
    """The secret a server with these settings uses, never a new one (`tandem token issue`).

    Raises `SecretNotFound` naming where it looked when neither is there.
    """
    if jwt_secret:
        _check_secret(jwt_secret)
        return jwt_secret
    path = Path(data_dir).resolve() / SECRET_FILE
    if not path.exists():
        raise SecretNotFound(
            f"no token secret: TANDEM_JWT_SECRET is unset and {path} does not exist; set "
            f"TANDEM_JWT_SECRET as the server has it, or point --data-dir (TANDEM_DATA_DIR) at the "
            f"server's data folder (tandem serve creates the secret there on its first start)"
        )
    return load_or_create_secret(path.parent)
