"""Sans-I/O core of the wire protocol (docs/protocol.md), in one namespace: the messages
(server/wire/messages.py, messages_presence.py, protocol_coordination.py), reading frames
(server/wire/parsing.py) and session state (server/wire/session_rules.py).

Rule 1: nothing here awaits, reads a clock or touches a socket. Frames and `now` go in; typed
messages, `ProtocolError` values and frames to send come out. Rule 2: no import of asyncio,
starlette, asyncpg or redis. The agent endpoint (server/transport/agent.py) drives a `ProtocolSession`; any change
here updates docs/protocol.md and tests/test_protocol.py with it."""

from __future__ import annotations

from server.wire import protocol_agents as agents  # noqa: F401
from server.wire import protocol_coordination as coordination  # noqa: F401
from server.wire import protocol_executions as executions  # noqa: F401
from server.wire import protocol_workflows as workflows  # noqa: F401
from server.wire.fields import (  # noqa: F401 - re-exported: the protocol's field types live in server/wire/fields.py
    B64,
    EMPTY_STATE_VECTOR,
    MAX_ERROR_DETAILS,
    MAX_REQUEST_ID_CHARS,
    MAX_SAFE_INTEGER,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    B64Out,
    B64Update,
    ContentType,
    Name,
    Out,
    ReqId,
    Request,
    Role,
    ShortName,
    StateVector,
    TaskEvents,
    Visibility,
    _request_id,
)
from server.wire.messages import (  # noqa: F401 - this namespace
    _BATCH_ADAPTER,
    _CLIENT_ADAPTER,
    CLIENT_MESSAGES,
    MAX_BATCH_MESSAGES,
    SERVER_MESSAGES,
    AwarenessSet,
    ClientMessage,
    DocClose,
    DocCloseOk,
    DocCreate,
    DocCreateOk,
    DocList,
    DocListOk,
    DocOp,
    DocOpen,
    DocOpenOk,
    DocResync,
    DocResyncOk,
    DocumentInfo,
    DocUpdate,
    DocUpdateOk,
    Hello,
    HelloOk,
    Limits,
    MemberInfo,
    Ping,
    Pong,
    PresenceList,
    ServerHello,
    SessionClosing,
    WorkspaceCreate,
    WorkspaceCreateOk,
    WorkspaceInfo,
    WorkspaceJoin,
    WorkspaceJoinOk,
    WorkspaceLeave,
    WorkspaceLeaveOk,
    WorkspaceList,
    WorkspaceListOk,
    awareness_bytes,
    encode,
)
from server.wire.messages_presence import (  # noqa: F401 - this namespace
    AwarenessChanged,
    AwarenessSetOk,
    LeftReason,
    PresenceBatch,
    PresenceChanged,
    PresenceGone,
    PresenceJoined,
    PresenceLeft,
    PresenceListOk,
    PresenceMember,
    PresenceStale,
)
from server.wire.parsing import (  # noqa: F401 - this namespace
    ProtocolError,
    _classify,
    _field_error,
    _request_id_of,
    frame_bytes,
    is_batch,
    parse,
    parse_batch,
)
from server.wire.session_rules import (  # noqa: F401 - this namespace
    RULES,
    TRANSITIONS,
    Closing,
    ConnEvent,
    ConnState,
    LocalProtocolError,
    ProtocolSession,
    Rule,
    TokenBucket,
)
