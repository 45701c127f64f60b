"""The pure parts of webhooks (docs/http.md, "Webhooks"): the one list of event types, the retry
schedule, and a signed request that the Standard Webhooks library verifies."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from server.core.settings import Settings
from server.wire.webhook_types import WebhookEventType, of_event
from server.workspaces.webhook_delivery import body, retry_delay_s, signed_headers
from server.workspaces.webhooks import new_secret
from tests.serverproc import REPO


def test_the_migration_allows_exactly_the_enum_of_event_types() -> None:
    text = (REPO / "migrations" / "0030_create_webhooks.sql").read_text()
    listed = re.search(r"event_types <@ ARRAY\[(.*?)\]::text\[\]", text, re.DOTALL)
    assert listed is not None
    assert re.findall(r"'([\w.]+)'", listed.group(1)) == [
        t.value for t in WebhookEventType
    ]


def test_workspace_events_map_to_their_own_type_and_documents_only_come_from_the_log() -> (
    None
):
    assert of_event("task.changed") is WebhookEventType.TASK_CHANGED
    assert (
        of_event("workflow.execution.changed")
        is WebhookEventType.WORKFLOW_EXECUTION_CHANGED
    )
    assert (
        of_event("document.changed") is None
    )  # written by the log's trigger, not by events
    assert of_event("doc.deleted") is None


def test_retries_double_from_the_base_up_to_the_cap() -> None:
    assert [retry_delay_s(n, 5, 3600) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert retry_delay_s(11, 5, 3600) == 3600
    assert retry_delay_s(10_000, 5, 3600) == 3600  # no overflow however many attempts


def test_a_signed_request_verifies_with_the_library_and_a_changed_body_does_not() -> (
    None
):
    secret = new_secret()
    assert secret.startswith("whsec_")
    happened = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    data = body(42, "state.changed", {"type": "state.changed", "version": 3}, happened)
    headers = signed_headers(secret, 42, data, datetime.now(UTC))
    assert headers["webhook-id"] == "42"
    verified = Webhook(secret).verify(data, headers)
    assert verified == json.loads(data)
    assert (
        verified["timestamp"] == "2026-01-02T03:04:05+00:00"
        and verified["data"]["version"] == 3
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(data.replace("3}", "4}"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(data, headers)


def test_a_lease_no_longer_than_a_post_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="TANDEM_WEBHOOK_LEASE_S must be greater"):
        Settings(webhook_timeout_s=10, webhook_lease_s=10)
    assert Settings(webhook_timeout_s=2, webhook_lease_s=3).webhook_lease_s == 3
