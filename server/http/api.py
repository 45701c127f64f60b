"""The /v1 application: FastAPI with the directory and content routes, problem JSON for every
failure, and the body rules in front (server/http/body.py). Mounted by server/app.py at /v1;
the OpenAPI document FastAPI generates from these routes is served at /v1/openapi.json."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from server.core.settings import Settings
from server.http import (
    content_routes,
    directory_routes,
    lock_routes,
    problems,
    state_routes,
    task_routes,
    token_routes,
    webhook_routes,
    write_routes,
)
from server.http.access import NodeGetter
from server.http.body import BodyGuard

PREFIX = "/v1"
VERSION = "1.0.0"
ROUTERS = (
    directory_routes.router,
    content_routes.router,
    write_routes.router,
    state_routes.router,
    task_routes.router,
    lock_routes.router,
    token_routes.router,
    webhook_routes.router,
)
"""Every route of /v1 (the OpenAPI test checks the document lists each of them)."""


def create_api(node_of: NodeGetter) -> FastAPI:
    """The FastAPI app; `node_of()` is the running node (None while starting or stopping)."""
    api = FastAPI(
        title="Tandem HTTP API",
        version=VERSION,
        description="Workspaces and documents of a Tandem server over HTTP (docs/http.md).",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        servers=[{"url": PREFIX}],
        root_path_in_servers=False,
    )
    api.state.node_of = node_of
    for router in ROUTERS:
        api.include_router(router)
    problems.install(api)
    return api


def mountable(api: FastAPI, settings: Settings) -> ASGIApp:
    """`api` behind the body rules, as server/app.py mounts it."""
    return BodyGuard(api, settings.http_max_body_bytes)
