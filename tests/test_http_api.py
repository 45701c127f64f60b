"""The /v1 app's contract without a server: its OpenAPI document validates (OpenAPI 3.1, by
openapi-spec-validator) and lists every route it serves, and every error code of the protocol
has exactly one HTTP status (server/http/problems.py `STATUS`), as docs/http.md lists them."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from server.core.errors import ErrorCode
from server.http import api as http_api
from server.http.problems import STATUS, problem_response
from tests.serverproc import REPO

DOCS = "/workspaces/{workspace_id}/documents"


def test_the_openapi_document_validates_and_lists_every_route() -> None:
    api = http_api.create_api(lambda: None)
    spec = api.openapi()
    validate(spec)
    routes = [
        route
        for router in http_api.ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    served = {
        (route.path, method.lower()) for route in routes for method in route.methods
    }
    listed = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == listed
    assert len(served) == 33
    assert ("/tokens/revoke", "post") in served
    for path, method in [(f"{DOCS}/{{doc_id}}/updates", "post"), (f"{DOCS}/{{doc_id}}/edits", "post"),
                         ("/workspaces/{workspace_id}/state", "patch"), ("/tasks/{task_id}/start", "post"),
                         ("/workspaces/{workspace_id}/locks/acquire", "post")]:  # fmt: skip
        assert {"409", "412", "423"} <= set(spec["paths"][path][method]["responses"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A Tandem token (`tandem token issue`), as /ws takes it.",
    }
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert {"401", "404", "422"} <= set(operation["responses"]), (path, method)
            assert operation["security"] == [{"HTTPBearer": []}], (path, method)


def test_every_error_code_has_one_http_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert all(400 <= status <= 599 for status in STATUS.values())


def test_a_problem_is_rfc_9457_json_with_the_code() -> None:
    response = problem_response(ErrorCode.NOT_MEMBER, "join first", {"x": 1})
    assert (
        response.status_code == 403
        and response.media_type == "application/problem+json"
    )
    assert response.body == (
        b'{"type":"urn:tandem:error:not_member","title":"Join the workspace first.","status":403,'
        b'"detail":"join first","code":"not_member","details":{"x":1}}'
    )
    assert (
        problem_response(ErrorCode.UNAUTHORIZED).headers["www-authenticate"]
        == 'Bearer realm="tandem"'
    )


def test_docs_http_lists_every_route_and_the_status_of_every_code() -> None:
    text = (REPO / "docs" / "http.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|$", text, re.MULTILINE))
    assert {code: int(status) for code, status in rows.items()} == {
        c.value: s for c, s in STATUS.items()
    }
    documented = set(re.findall(r"^\| `(GET|POST|PATCH|DELETE) ([^`?\[]+)", text, re.MULTILINE))
    documented = {
        (method.lower(), path.replace("/v1", "", 1).replace(".../documents", DOCS))
        for method, path in documented
    }
    routes = [
        route
        for router in http_api.ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    assert documented == {(m.lower(), r.path) for r in routes for m in r.methods}
