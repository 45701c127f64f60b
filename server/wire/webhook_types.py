"""The webhook event types (docs/http.md, "Webhooks"): the one list endpoints subscribe from,
the outbox stores and migration 0030's `webhook_event_types_known` check names.

Every type but `document.changed` is a workspace event's own wire `type` (docs/protocol.md#126),
sent with that message as its data; `document.changed` is written by the log's trigger.
"""

from __future__ import annotations

from enum import StrEnum


class WebhookEventType(StrEnum):
    DOCUMENT_CHANGED = "document.changed"
    TASK_CHANGED = "task.changed"
    STATE_CHANGED = "state.changed"
    LOCK_ACQUIRED = "lock.acquired"
    LOCK_RENEWED = "lock.renewed"
    LOCK_RELEASED = "lock.released"
    MEMBER_CHANGED = "member.changed"
    WORKFLOW_EXECUTION_CHANGED = "workflow.execution.changed"


def of_event(message_type: str) -> WebhookEventType | None:
    """The webhook type of a workspace event's wire type; None: not sent as a webhook."""
    try:
        found = WebhookEventType(message_type)
    except ValueError:
        return None
    return None if found is WebhookEventType.DOCUMENT_CHANGED else found
