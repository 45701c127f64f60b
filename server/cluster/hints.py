"""The NOTIFY payloads nodes send each other on one channel: their keys, size limits, and
encoding and decoding into typed hints. Pure: imports no asyncpg or Starlette, and of the server
only server/core's `Revocation`.

Three kinds share the channel, told apart by `"k"`; each key has one meaning in all:
- `"ops"`, a document's operations committed (server/cluster/fanout.py). Built in SQL by
  `tandem_ops_hint` (migration 0022) in the appending transaction; decoded here.
- `"ev"`, a workspace event (server/cluster/events.py). Encoded and decoded here.
- `"rev"`, a token revocation (server/core/revocations.py). Encoded and decoded here.
A hint is not the truth: a receiver that cannot decode one catches up from the log.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, NamedTuple

from server.core.revocations import Revocation

CHANNEL = "tandem"

# Both kinds.
KIND = "k"  # "ops" | "ev" | "rev"
NODE = "n"  # the sending node's id: a node ignores its own hints
# Document operations ("ops").
DOC = "d"  # doc_id
SEQ = "s"  # the document's last seq in this commit
AT = "t"  # the sender's clock at commit, seconds since the epoch (fan-out lag)
OPS = "o"  # the operations up to SEQ, each [agent_id, base64 update, op_type], when small
# Workspace events ("ev").
TENANT = "tn"  # tenant_id
WORKSPACE = "w"  # workspace_id
AGENTS = "a"  # agents reached even if not joined
EVENT = "e"  # the wire message (docs/protocol.md#126)
REF = "r"  # [kind, id, field]: `field` left out of EVENT, to be read back by the receiver
# Token revocations ("rev"), with TENANT.
AGENT = "ag"  # the agent whose token (or every token issued before REVOKED_BEFORE) is revoked
JTI = "j"  # the revoked token's id; absent: the agent's tokens issued before REVOKED_BEFORE
REVOKED_BEFORE = "b"  # seconds since the epoch
EXPIRES = "x"  # when the revoked token expires, seconds since the epoch (absent: unknown)

KIND_OPS = "ops"
KIND_EVENT = "ev"
KIND_REVOKED = "rev"

# PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more; this leaves room for the envelope.
MAX_NOTIFY_BYTES = 7900
# Operations ride along in an "ops" hint only while their updates total at most this many bytes
# (before base64), so a big update is never encoded only to be dropped at MAX_NOTIFY_BYTES.
MAX_CARRIED_UPDATE_BYTES = 4000


class BadHint(ValueError):
    """A payload that is not a hint of a known kind."""


# Named tuples, not frozen dataclasses: several are built per commit on every other node, and a
# named tuple is about three times cheaper to build.
class CarriedOperation(NamedTuple):
    agent_id: str
    update: bytes
    op_type: str


class OpsHint(NamedTuple):
    """Document `doc_id` has operations up to `seq`; `carried` holds the last of them (in seq
    order, ending at `seq`) when they were small enough to ride along, else nothing."""

    node_id: str
    doc_id: uuid.UUID
    seq: int
    at: float | None
    carried: tuple[CarriedOperation, ...]


class EventHint(NamedTuple):
    node_id: str
    tenant_id: uuid.UUID
    workspace_id: uuid.UUID
    agents: frozenset[str]
    message: dict[str, Any]
    ref: tuple[str, str, str] | None  # (kind, id, field): `field` is missing from `message`


class RevokedHint(NamedTuple):
    node_id: str
    revocation: Revocation


Hint = OpsHint | EventHint | RevokedHint


def encode_revoked(node_id: str, revocation: Revocation) -> str:
    """Compact JSON, well under MAX_NOTIFY_BYTES (an agent id is at most 255 characters)."""
    body: dict[str, Any] = {KIND: KIND_REVOKED, NODE: node_id, TENANT: str(revocation.tenant_id)}
    if revocation.agent_id is not None:
        body[AGENT] = revocation.agent_id
    if revocation.jti is not None:
        body[JTI] = str(revocation.jti)
    if revocation.revoked_before is not None:
        body[REVOKED_BEFORE] = revocation.revoked_before
    if revocation.expires_at is not None:
        body[EXPIRES] = revocation.expires_at
    return json.dumps(body, separators=(",", ":"))


def encode_event(
    node_id: str, tenant_id: uuid.UUID, workspace_id: uuid.UUID, agents: frozenset[str],
    message: dict[str, Any], ref: tuple[str, str, str] | None,
) -> str:  # fmt: skip
    """Compact JSON. When it exceeds MAX_NOTIFY_BYTES and `ref` names a field, the message goes
    without that field and the hint carries `ref` instead; without `ref` it is returned whole
    (NOTIFY then refuses it, failing the writer's transaction)."""
    body = {
        KIND: KIND_EVENT, NODE: node_id, TENANT: str(tenant_id), WORKSPACE: str(workspace_id),
        AGENTS: sorted(agents), EVENT: message,
    }  # fmt: skip
    text = json.dumps(body, separators=(",", ":"), default=str)
    if ref is None or len(text.encode()) <= MAX_NOTIFY_BYTES:
        return text
    body[EVENT] = {k: v for k, v in message.items() if k != ref[2]}
    body[REF] = list(ref)
    return json.dumps(body, separators=(",", ":"), default=str)


def decode(payload: str, own_node_id: str) -> Hint | None:
    """The hint in `payload`, or None when this node sent it. Raises BadHint otherwise."""
    # Own "ops" hints (every one sent comes back) are dropped before parsing: SQL's json spaces
    # the key `"n" : `, its jsonb `"n": `, and neither can occur elsewhere in such a payload
    # (its only strings are escaped). Events are compact JSON around a message that may hold
    # any key, so they are checked after parsing.
    if f'"{NODE}": "{own_node_id}"' in payload or f'"{NODE}" : "{own_node_id}"' in payload:
        return None
    try:
        body = json.loads(payload)
        node_id = body[NODE]
        if node_id == own_node_id:
            return None
        kind = body[KIND]
        if kind == KIND_OPS:
            at = body.get(AT)
            return OpsHint(
                node_id, uuid.UUID(body[DOC]), int(body[SEQ]), float(at) if isinstance(at, int | float) else None,
                tuple(CarriedOperation(agent, base64.b64decode(update), op_type) for agent, update, op_type in body.get(OPS) or ()),
            )  # fmt: skip
        if kind == KIND_REVOKED:
            jti, before, expires = body.get(JTI), body.get(REVOKED_BEFORE), body.get(EXPIRES)
            agent = body.get(AGENT)
            return RevokedHint(node_id, Revocation(
                uuid.UUID(body[TENANT]), None if agent is None else str(agent), None if jti is None else uuid.UUID(jti),
                None if before is None else float(before), None if expires is None else float(expires),
            ))  # fmt: skip
        if kind == KIND_EVENT:
            ref = body.get(REF)
            return EventHint(
                node_id, uuid.UUID(body[TENANT]), uuid.UUID(body[WORKSPACE]), frozenset(body.get(AGENTS, ())),
                body[EVENT], None if ref is None else (str(ref[0]), str(ref[1]), str(ref[2])),
            )  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise BadHint(str(exc)) from exc
    raise BadHint(f"unknown kind {kind!r}")
