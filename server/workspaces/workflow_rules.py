"""Checking a workflow definition (docs/protocol.md section 12.8) before anything is stored.

Three passes, each stopping at the first fault: the size limits, the JSON Schema (Draft 2020-12,
`jsonschema`), then the graph: unique step ids, known ids in `depends_on` and `on_failure`, no
cycle, steps with several agents (only in `collaborative` workflows, on a document), and
conditions (only in `conditional` workflows) that compile as CEL (`cel-python`, parsed and never
evaluated here) and read only `input`, `context` and the results of upstream steps.
A fault is `invalid_workflow` whose details name the step, the field (a JSON pointer into the
definition) and the reason. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
import lark
from celpy.celparser import CELParseError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from server.core.errors import ErrorCode, TandemError

TYPES = ("sequential", "parallel", "conditional", "collaborative")  # enum workflow_type
WHO = ("agent", "capability", "agents")  # who does a step: exactly one of these fields
VARIABLES = frozenset({"input", "context", "steps"})  # what a condition may read
# Names a CEL expression may use that are not variables: type denotations.
_CEL_TYPE_NAMES = frozenset(
    {
        "int",
        "uint",
        "double",
        "bool",
        "string",
        "bytes",
        "list",
        "map",
        "null_type",
        "type",
        "dyn",
    }
)
_MACROS = frozenset(
    {"all", "exists", "exists_one", "map", "filter"}
)  # bind their first argument
# A step id is a CEL identifier, so a condition can say `steps.review.approved`.
STEP_ID_PATTERN = "^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_COLLABORATORS = 16  # agents of one collaborative step
UUID_PATTERN = (
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

_TEXT = {"type": "string", "minLength": 1}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["type", "steps"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": list(TYPES)},
        "config": {"type": "object"},
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "task"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": STEP_ID_PATTERN},
                    "task": {
                        "type": "object",
                        "required": ["title"],
                        "additionalProperties": False,
                        "properties": {
                            "title": {**_TEXT, "maxLength": 500, "pattern": r"\S"},
                            "description": {"type": "string", "maxLength": 10_000},
                            "parameters": {"type": "object"},
                            "priority": {"enum": ["low", "normal", "high", "critical"]},
                            "timeout_s": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 7 * 24 * 3600,
                            },
                            "max_retries": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 10,
                            },
                        },
                    },
                    "agent": {**_TEXT, "maxLength": 255},
                    "capability": {**_TEXT, "maxLength": 100},
                    "agents": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": MAX_COLLABORATORS,
                        "uniqueItems": True,
                        "items": {**_TEXT, "maxLength": 255},
                    },
                    "document_id": {"type": "string", "pattern": UUID_PATTERN},
                    "depends_on": {
                        "type": "array",
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": STEP_ID_PATTERN},
                    },
                    "condition": {**_TEXT, "maxLength": 2000},
                    "on_failure": {"type": "string", "pattern": STEP_ID_PATTERN},
                },
                # Who does the step: a named agent, any agent with a capability, or several
                # named agents together (a collaborative step); exactly one of them.
                "oneOf": [
                    {"required": ["agent"]},
                    {"required": ["capability"]},
                    {"required": ["agents"]},
                ],
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(SCHEMA)
_CEL = celpy.Environment()


def invalid(
    reason: str, pointer: str, step: str | None = None, **extra: Any
) -> TandemError:
    """`invalid_workflow` naming the step (None: the definition as a whole) and the field."""
    where = (
        f"step {step!r}, {pointer}"
        if step is not None
        else (pointer or "the definition")
    )
    details = {"step": step, "pointer": pointer, "reason": reason, **extra}
    return TandemError(
        ErrorCode.INVALID_WORKFLOW,
        f"Invalid workflow definition at {where}: {reason}",
        details,
    )


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901) into the definition."""
    return "".join("/" + _escape(p) for p in parts)


def check_definition(
    definition: Any, *, max_steps: int, max_bytes: int
) -> dict[str, Any]:
    """Return the definition with its optional parts filled in, or raise `invalid_workflow`."""
    size = len(
        json.dumps(definition, separators=(",", ":"), ensure_ascii=False).encode()
    )
    if size > max_bytes:
        raise invalid(
            f"the definition is {size} bytes, more than {max_bytes}",
            "",
            limit="max_workflow_bytes",
        )
    steps = definition.get("steps") if isinstance(definition, dict) else None
    if isinstance(steps, list) and len(steps) > max_steps:
        raise invalid(
            f"{len(steps)} steps, more than {max_steps}",
            "/steps",
            limit="max_workflow_steps",
        )
    _check_schema(definition)
    _check_graph(definition)
    return {
        "type": definition["type"],
        "config": definition.get("config", {}),
        "steps": [{"depends_on": [], **step} for step in definition["steps"]],
    }


def _check_schema(definition: Any) -> None:
    error = best_match(_VALIDATOR.iter_errors(definition))
    if error is None:
        return
    path = list(error.absolute_path)
    step = None
    if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
        found = definition["steps"][path[1]]
        if isinstance(found, dict) and isinstance(found.get("id"), str):
            step = found["id"]
    raise invalid(_reason(error, path), pointer(*path), step)


def _reason(error: ValidationError, path: list[str | int]) -> str:
    """A short reason; for a missing or extra property the pointer is extended to name it."""
    if error.validator == "required":
        missing = next(
            name for name in error.validator_value if name not in error.instance
        )
        path.append(missing)
        return f"{missing!r} is required"
    if error.validator == "additionalProperties":
        extra = min(set(error.instance) - set(error.schema.get("properties", {})))
        path.append(extra)
        return f"{extra!r} is not allowed here"
    if error.validator == "oneOf":
        given = [k for k in WHO if k in error.instance]
        path.append(given[1] if len(given) > 1 else WHO[0])
        return "give exactly one of 'agent', 'capability' and 'agents'"
    if error.validator == "pattern" and error.schema.get("pattern") == STEP_ID_PATTERN:
        return "a step id is a letter or underscore, then up to 63 letters, digits or underscores"
    return error.message


def _check_graph(definition: Mapping[str, Any]) -> None:
    steps: list[dict[str, Any]] = definition["steps"]
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step["id"] in index:
            raise invalid(
                f"step id {step['id']!r} is used twice",
                pointer("steps", i, "id"),
                step["id"],
            )
        index[step["id"]] = i
    for i, step in enumerate(steps):
        for k, dep in enumerate(step.get("depends_on", [])):
            if dep not in index:
                raise invalid(
                    f"depends on unknown step {dep!r}",
                    pointer("steps", i, "depends_on", k),
                    step["id"],
                )
        target = step.get("on_failure")
        if target is not None and target not in index:
            raise invalid(
                f"on_failure names unknown step {target!r}",
                pointer("steps", i, "on_failure"),
                step["id"],
            )
        if target == step["id"]:
            raise invalid(
                "on_failure names the step itself",
                pointer("steps", i, "on_failure"),
                step["id"],
            )
    cycle = _find_cycle(steps)
    if cycle is not None:
        first = steps[index[cycle[0]]]
        k = first["depends_on"].index(cycle[1])
        raise invalid(
            "the steps depend on each other in a cycle: " + " -> ".join(cycle),
            pointer("steps", index[cycle[0]], "depends_on", k), cycle[0], cycle=cycle,
        )  # fmt: skip
    for i, step in enumerate(steps):
        if "agents" in step:
            _check_collaborative(definition["type"], step, i)
        if "condition" in step:
            where = pointer("steps", i, "condition")
            if definition["type"] != "conditional":
                raise invalid(
                    "conditions are only allowed in conditional workflows",
                    where,
                    step["id"],
                )
            _check_condition(
                step["condition"], where, step["id"], _upstream(steps, index, i)
            )


def _check_collaborative(workflow_type: str, step: Mapping[str, Any], i: int) -> None:
    """A step done by several agents together: only in `collaborative` workflows, and on a
    document they share."""
    if workflow_type != "collaborative":
        raise invalid(
            "steps with several agents are only allowed in collaborative workflows",
            pointer("steps", i, "agents"),
            step["id"],
        )
    if "document_id" not in step:
        raise invalid(
            "a step with several agents needs 'document_id', the document they share",
            pointer("steps", i, "document_id"),
            step["id"],
        )


def _find_cycle(steps: list[dict[str, Any]]) -> list[str] | None:
    """A cycle of `depends_on` edges as [a, b, ..., a] (a depends on b ...), or None."""
    edges = {s["id"]: list(s.get("depends_on", [])) for s in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start, deps in edges.items():
        if start in state:
            continue
        path: list[str] = [start]
        todo: list[Iterator[str]] = [iter(deps)]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(edges[nxt]))
    return None


def _upstream(
    steps: list[dict[str, Any]], index: Mapping[str, int], i: int
) -> set[str]:
    """The steps that step i depends on, directly or not (their results exist when it runs)."""
    seen: set[str] = set()
    todo = list(steps[i].get("depends_on", []))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(steps[index[dep]].get("depends_on", []))
    return seen


def _check_condition(text: str, where: str, step: str, upstream: set[str]) -> None:
    try:
        tree = _CEL.compile(text)
    except CELParseError as exc:
        column = getattr(exc, "column", None)
        at = f" at column {column}" if column is not None else ""
        raise invalid(
            f"the condition is not valid CEL: syntax error{at}", where, step
        ) from None
    bound = {_bound_name(node) for node in tree.find_data("member_dot_arg")} - {None}
    for node in tree.find_data("ident"):
        name = str(node.children[0])
        if name not in VARIABLES and name not in bound and name not in _CEL_TYPE_NAMES:
            raise invalid(
                f"the condition reads unknown variable {name!r} (use input, context, steps)",
                where,
                step,
            )
    for node in tree.find_data("member_dot"):
        inner, field = node.children[0], str(node.children[1])
        if _is_ident(inner, "steps") and field not in upstream:
            raise invalid(
                f"the condition reads steps.{field}, which is not a step this one depends on",
                where,
                step,
            )


def _bound_name(node: lark.Tree) -> str | None:
    """The variable a comprehension macro (`list.all(x, ...)`) binds, if `node` is one."""
    _target, method, *rest = node.children
    if str(method) not in _MACROS or not rest or not rest[0].children:
        return None
    first = rest[0].children[0]
    idents = list(first.find_data("ident"))
    return str(idents[0].children[0]) if len(idents) == 1 else None


def _is_ident(node: Any, name: str) -> bool:
    """Whether `node` (a `member`) is the bare identifier `name`."""
    return (
        isinstance(node, lark.Tree) and node.data == "member" and len(node.children) == 1
        and isinstance(node.children[0], lark.Tree) and node.children[0].data == "primary"
        and isinstance(node.children[0].children[0], lark.Tree) and node.children[0].children[0].data == "ident"
        and str(node.children[0].children[0].children[0]) == name
    )  # fmt: skip
