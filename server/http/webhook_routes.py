"""A workspace's webhook endpoints over HTTP (docs/http.md, "Webhooks"): register, list, remove,
and read an endpoint's delivery log. Owners and admins of the workspace only
(server/workspaces/webhooks.py). The signing secret is in the creation's response alone."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AnyHttpUrl, Field, TypeAdapter, ValidationError, field_validator

from server.core.auth import Principal
from server.http.access import principal, transaction
from server.http.problems import PROBLEMS
from server.wire.fields import Out
from server.wire.fields import Request as RequestBody
from server.wire.webhook_types import WebhookEventType
from server.workspaces import webhooks

log = structlog.get_logger("tandem.webhooks")
router = APIRouter(responses=PROBLEMS)
Caller = Annotated[Principal, Depends(principal)]
HOOKS = "/workspaces/{workspace_id}/webhooks"
MAX_URL_CHARS = 2048
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


class WebhookCreate(RequestBody):
    url: Annotated[
        str,
        Field(min_length=1, max_length=MAX_URL_CHARS, description="An http(s) URL."),
    ]
    event_types: Annotated[
        list[WebhookEventType], Field(min_length=1, max_length=len(WebhookEventType))
    ]

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            _HTTP_URL.validate_python(value)
        except ValidationError:
            raise ValueError("must be an absolute http or https URL") from None
        return value

    @field_validator("event_types", mode="before")
    @classmethod
    def _types(cls, value: object) -> object:
        # Strict mode takes no str for an enum: each name is checked against the enum here.
        if isinstance(value, list):
            return [
                WebhookEventType(v) if v in WebhookEventType._value2member_map_ else v
                for v in value
            ]
        return value


class Webhook(Out):
    id: uuid.UUID
    workspace_id: uuid.UUID
    url: str
    event_types: list[WebhookEventType]
    enabled: bool
    failures: int  # failed attempts in a row
    disabled_reason: str | None
    created_at: datetime


class WebhookCreated(Webhook):
    secret: str  # `whsec_...`: shown this once, for verifying signatures


class WebhookList(Out):
    webhooks: list[Webhook]


class WebhookDelivery(Out):
    event_id: int  # the `webhook-id` header
    type: WebhookEventType
    attempt: int  # attempts made
    status: str  # pending, delivered, failed (to be retried), dead
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime  # when the event happened


class WebhookDeliveryPage(Out):
    webhook_id: uuid.UUID
    deliveries: list[WebhookDelivery]


def _out(endpoint: webhooks.Endpoint) -> Webhook:
    return Webhook(**{f: getattr(endpoint, f) for f in Webhook.model_fields})


@router.post(
    HOOKS,
    status_code=201,
    response_model=WebhookCreated,
    summary="Register a webhook endpoint",
)
async def create_webhook(
    request: Request, workspace_id: uuid.UUID, body: WebhookCreate, who: Caller
) -> WebhookCreated:
    async with transaction(request, who) as conn:
        await webhooks.require_admin(conn, who.agent_id, workspace_id)
        endpoint, secret = await webhooks.create_endpoint(
            conn, who.agent_id, workspace_id, body.url, body.event_types
        )
    log.info(
        "webhooks.endpoint_created", tenant_id=str(who.tenant_id), workspace_id=str(workspace_id),
        endpoint=str(endpoint.id), agent_id=who.agent_id,
    )  # fmt: skip
    return WebhookCreated(**_out(endpoint).model_dump(), secret=secret)


@router.get(
    HOOKS, response_model=WebhookList, summary="A workspace's webhook endpoints"
)
async def list_webhooks(
    request: Request, workspace_id: uuid.UUID, who: Caller
) -> WebhookList:
    async with transaction(request, who) as conn:
        await webhooks.require_admin(conn, who.agent_id, workspace_id)
        found = await webhooks.list_endpoints(conn, workspace_id)
    return WebhookList(webhooks=[_out(e) for e in found])


@router.delete(
    HOOKS + "/{hook_id}",
    status_code=204,
    summary="Remove a webhook endpoint and its deliveries",
)
async def delete_webhook(
    request: Request, workspace_id: uuid.UUID, hook_id: uuid.UUID, who: Caller
) -> Response:
    async with transaction(request, who) as conn:
        await webhooks.require_admin(conn, who.agent_id, workspace_id)
        await webhooks.delete_endpoint(conn, workspace_id, hook_id)
    log.info(
        "webhooks.endpoint_deleted", tenant_id=str(who.tenant_id), workspace_id=str(workspace_id),
        endpoint=str(hook_id), agent_id=who.agent_id,
    )  # fmt: skip
    return Response(status_code=204)


@router.get(
    HOOKS + "/{hook_id}/deliveries",
    response_model=WebhookDeliveryPage,
    summary="An endpoint's delivery log, newest event first",
)
async def list_deliveries(
    request: Request,
    workspace_id: uuid.UUID,
    hook_id: uuid.UUID,
    who: Caller,
    before: Annotated[
        int | None, Query(ge=1, description="Only events before this event id")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> WebhookDeliveryPage:
    async with transaction(request, who) as conn:
        await webhooks.require_admin(conn, who.agent_id, workspace_id)
        found = await webhooks.deliveries(conn, workspace_id, hook_id, before, limit)
    return WebhookDeliveryPage(
        webhook_id=hook_id,
        deliveries=[
            WebhookDelivery(**{f: getattr(d, f) for f in WebhookDelivery.model_fields})
            for d in found
        ],
    )
