"""Workflow definitions checked before anything is stored (server/workspaces/workflow_rules.py,
docs/protocol.md section 12.8): each class of bad definition gets `invalid_workflow` naming the
step and the field (a JSON pointer), and a good one comes back with its defaults filled in.

Pure: no database, no server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server.core.errors import ErrorCode, TandemError
from server.core.settings import Settings
from server.workspaces import workflow_rules

LIMITS = {
    "max_steps": Settings().max_workflow_steps,
    "max_bytes": Settings().max_workflow_bytes,
}


def step(step_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "task": {"title": f"Do {step_id}"},
        "agent": "writer",
        **fields,
    }


DOC = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


def collab(step_id: str, **fields: Any) -> dict[str, Any]:
    """A step done by two agents together on one document."""
    return {"id": step_id, "task": {"title": f"Do {step_id}"}, "agents": ["x", "y"], "document_id": DOC, **fields}


def refusal(definition: Any, **limits: int) -> dict[str, Any]:
    with pytest.raises(TandemError) as info:
        workflow_rules.check_definition(definition, **{**LIMITS, **limits})
    assert info.value.code is ErrorCode.INVALID_WORKFLOW
    details = info.value.details
    assert details is not None
    # The message names the step and the field too.
    if details["step"] is not None:
        assert repr(details["step"]) in info.value.message
    assert details["pointer"] in info.value.message or details["pointer"] == ""
    return details


def test_a_good_definition_comes_back_with_its_defaults() -> None:
    definition = {
        "type": "conditional",
        "steps": [
            step("draft", document_id="0a8f9a56-3c54-4d4e-8c55-8f3f3c6b3d10"),
            {"id": "review", "task": {"title": "Review", "priority": "high", "timeout_s": 60, "max_retries": 2,
                                      "parameters": {"depth": 2}, "description": "read it"},
             "capability": "review", "depends_on": ["draft"], "on_failure": "fix",
             "condition": "input.words > 100 && steps.draft.ok && context.reviews.all(r, r.done)"},
            step("fix", depends_on=["draft"]),
        ],
    }  # fmt: skip
    checked = workflow_rules.check_definition(copy.deepcopy(definition), **LIMITS)
    assert checked["type"] == "conditional" and checked["config"] == {}
    assert [s["depends_on"] for s in checked["steps"]] == [[], ["draft"], ["draft"]]
    assert checked["steps"][1]["condition"] == definition["steps"][1]["condition"]


BAD: dict[str, tuple[dict[str, Any], str | None, str, str]] = {
    # name: (definition, step, pointer, words of the reason)
    "cycle": (
        {"type": "sequential", "steps": [step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"])]},
        "a", "/steps/0/depends_on/0", "cycle: a -> c -> b -> a",
    ),
    "self dependency": ({"type": "parallel", "steps": [step("a", depends_on=["a"])]}, "a", "/steps/0/depends_on/0", "a -> a"),
    "unknown dependency": (
        {"type": "sequential", "steps": [step("a"), step("b", depends_on=["a", "ghost"])]},
        "b", "/steps/1/depends_on/1", "unknown step 'ghost'",
    ),
    "unknown on_failure": ({"type": "sequential", "steps": [step("a", on_failure="ghost")]}, "a", "/steps/0/on_failure", "unknown step"),
    "on_failure itself": ({"type": "sequential", "steps": [step("a", on_failure="a")]}, "a", "/steps/0/on_failure", "the step itself"),
    "duplicate id": ({"type": "sequential", "steps": [step("a"), step("b"), step("a")]}, "a", "/steps/2/id", "used twice"),
    "both agent and capability": (
        {"type": "sequential", "steps": [step("a", capability="review")]}, "a", "/steps/0/capability", "exactly one of",
    ),
    "neither agent nor capability": (
        {"type": "sequential", "steps": [{"id": "a", "task": {"title": "A"}}]}, "a", "/steps/0/agent", "exactly one of",
    ),
    "agent and agents": (
        {"type": "collaborative", "steps": [step("a", agents=["x", "y"], document_id=DOC)]}, "a", "/steps/0/agents",
        "exactly one of",
    ),
    "agents in a sequential workflow": (
        {"type": "sequential", "steps": [collab("a")]}, "a", "/steps/0/agents", "only allowed in collaborative",
    ),
    "agents with no shared document": (
        {"type": "collaborative", "steps": [{k: v for k, v in collab("a").items() if k != "document_id"}]}, "a",
        "/steps/0/document_id", "needs 'document_id'",
    ),
    "one agent in agents": (
        {"type": "collaborative", "steps": [collab("a", agents=["x"])]}, "a", "/steps/0/agents", "too short",
    ),
    "an agent twice in agents": (
        {"type": "collaborative", "steps": [collab("a", agents=["x", "x"])]}, "a", "/steps/0/agents", "non-unique",
    ),
    "invalid CEL": (
        {"type": "conditional", "steps": [step("a", condition="input.x >")]}, "a", "/steps/0/condition", "not valid CEL",
    ),
    "unknown variable": (
        {"type": "conditional", "steps": [step("a", condition="secrets.key == 'x'")]}, "a", "/steps/0/condition",
        "unknown variable 'secrets'",
    ),
    "condition reads a step not upstream": (
        {"type": "conditional", "steps": [step("a"), step("b", condition="steps.a.ok")]}, "b", "/steps/1/condition",
        "steps.a, which is not a step this one depends on",
    ),
    "condition outside a conditional workflow": (
        {"type": "parallel", "steps": [step("a", condition="true")]}, "a", "/steps/0/condition", "only allowed in conditional",
    ),
    "missing title": ({"type": "sequential", "steps": [{"id": "a", "task": {}, "agent": "w"}]}, "a", "/steps/0/task/title", "required"),
    "blank title": ({"type": "sequential", "steps": [{"id": "a", "task": {"title": "  "}, "agent": "w"}]}, "a", "/steps/0/task/title", "match"),
    "timeout of the wrong type": (
        {"type": "sequential", "steps": [{"id": "a", "task": {"title": "A", "timeout_s": "1h"}, "agent": "w"}]},
        "a", "/steps/0/task/timeout_s", "not of type 'integer'",
    ),
    "retries out of range": (
        {"type": "sequential", "steps": [{"id": "a", "task": {"title": "A", "max_retries": 11}, "agent": "w"}]},
        "a", "/steps/0/task/max_retries", "maximum",
    ),
    "unknown priority": (
        {"type": "sequential", "steps": [{"id": "a", "task": {"title": "A", "priority": "urgent"}, "agent": "w"}]},
        "a", "/steps/0/task/priority", "not one of",
    ),
    "parameters not an object": (
        {"type": "sequential", "steps": [{"id": "a", "task": {"title": "A", "parameters": [1]}, "agent": "w"}]},
        "a", "/steps/0/task/parameters", "not of type 'object'",
    ),
    "depends_on not a list": ({"type": "sequential", "steps": [step("a", depends_on="b")]}, "a", "/steps/0/depends_on", "not of type 'array'"),
    "document_id not a uuid": ({"type": "sequential", "steps": [step("a", document_id="doc-1")]}, "a", "/steps/0/document_id", "match"),
    "step id not an identifier": ({"type": "sequential", "steps": [step("a-b")]}, "a-b", "/steps/0/id", "step id is a letter"),
    "unknown step field": ({"type": "sequential", "steps": [step("a", retries=3)]}, "a", "/steps/0/retries", "not allowed"),
    "unknown type": ({"type": "loop", "steps": [step("a")]}, None, "/type", "not one of"),
    "missing steps": ({"type": "sequential"}, None, "/steps", "required"),
    "no steps": ({"type": "sequential", "steps": []}, None, "/steps", "non-empty"),
    "config not an object": ({"type": "sequential", "steps": [step("a")], "config": []}, None, "/config", "not of type 'object'"),
    "unknown top-level field": ({"type": "sequential", "steps": [step("a")], "agents": {}}, None, "/agents", "not allowed"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_definition_names_its_step_and_field(name: str) -> None:
    definition, step_id, pointer, says = BAD[name]
    details = refusal(definition)
    assert (details["step"], details["pointer"]) == (step_id, pointer)
    assert says in details["reason"]


def test_a_cycle_is_named_in_the_details() -> None:
    details = refusal(BAD["cycle"][0])
    assert details["cycle"] == ["a", "c", "b", "a"]


def test_too_many_steps_and_too_many_bytes_name_their_limit() -> None:
    many = {"type": "parallel", "steps": [step(f"s{i}") for i in range(4)]}
    details = refusal(many, max_steps=3)
    assert (details["step"], details["pointer"], details["limit"]) == (
        None,
        "/steps",
        "max_workflow_steps",
    )
    large = {
        "type": "sequential",
        "steps": [step("a", task={"title": "A", "description": "x" * 2000})],
    }
    details = refusal(large, max_bytes=1000)
    assert (details["step"], details["pointer"], details["limit"]) == (
        None,
        "",
        "max_workflow_bytes",
    )


def test_pointers_escape_slash_and_tilde() -> None:
    details = refusal({"type": "sequential", "steps": [step("a")], "a/b~c": 1})
    assert details["pointer"] == "/a~1b~0c"


def test_conditions_are_parsed_never_run() -> None:
    # A condition that would fail or loop when evaluated is only compiled here.
    definition = {
        "type": "conditional",
        "steps": [step("a", condition="input.n / 0 == 1 && size(context.items) > 0")],
    }
    assert workflow_rules.check_definition(definition, **LIMITS)["steps"][0][
        "condition"
    ].startswith("input.n")
