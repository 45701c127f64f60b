"""The review pipeline example (clients/examples/review_pipeline.py) end to end on two `tandem
serve` nodes: run as its own process with a token per agent, its agents spread over both nodes.
Every step runs once (one task per step, attempt 1, completed), the execution completes with
the expected step_results, and `tandem blame` attributes the document's text to every agent:
the writer's draft, each reviewer's comment and the editor's merge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid


from tests import wsclient
from tests.e2e.conftest import admin_fetch
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import REPO, TANDEM, server_env

EXAMPLE = REPO / "clients" / "examples" / "review_pipeline.py"
ROLES = ("writer", "reviewer-a", "reviewer-b", "editor")
RUN_TIMEOUT_S = 180.0  # bound on the example's process, never a measurement


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        args,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


async def test_the_review_pipeline_example_runs_each_step_once_on_two_nodes(
    nodes: Nodes,
) -> None:
    nodes.start(2)
    tenant = uuid.uuid4()
    tokens = [f"--token-{role}={wsclient.token(tenant, role)}" for role in ROLES]
    env = server_env(PYTHONPATH=str(REPO / "clients"))
    out = run(
        sys.executable,
        str(EXAMPLE),
        "--url",
        nodes.url(0),
        "--url",
        nodes.url(1),
        *tokens,
        env=env,
    )
    report = json.loads(out.strip().splitlines()[-1])

    assert report["status"] == "completed"
    results = report["step_results"]
    assert results["draft"]["by"] == "writer"
    assert results["merge"] == {"by": "editor", "merged": 2}
    reviews = {
        results[s]["by"]: results[s]["kind"] for s in ("review_style", "review_facts")
    }
    assert sorted(reviews) == [
        "reviewer-a",
        "reviewer-b",
    ]  # one review each, in parallel
    assert sorted(reviews.values()) == ["facts", "style"]

    rows = await admin_fetch(
        nodes.db,
        "SELECT step_id, attempt, status::text AS status, assigned_to FROM tasks"
        " WHERE tenant_id = $1 AND execution_id = $2 ORDER BY step_id",
        tenant, uuid.UUID(report["execution_id"]),
    )  # fmt: skip
    assert [(r["step_id"], r["attempt"], r["status"]) for r in rows] == [
        ("draft", 1, "completed"),
        ("merge", 1, "completed"),
        ("review_facts", 1, "completed"),
        ("review_style", 1, "completed"),
    ]
    assert {r["step_id"]: r["assigned_to"] for r in rows} == {
        "draft": "writer", "merge": "editor", **{step: by for by, step in
                                                 ((results[s]["by"], s) for s in ("review_style", "review_facts"))},
    }  # fmt: skip

    blamed = run(
        TANDEM, "blame", report["doc_id"], "--tenant", str(tenant), "--json",
        env=server_env(DATABASE_URL=nodes.db.admin_url),
    )  # fmt: skip
    spans = [json.loads(line) for line in blamed.splitlines() if line.strip()]
    text = report["text"]
    assert "".join(s["text"] for s in spans) == text
    by_agent: dict[str, str] = {}
    for span in spans:
        by_agent[span["agent_id"]] = by_agent.get(span["agent_id"], "") + span["text"]
    assert set(by_agent) == set(ROLES)
    assert by_agent["writer"].startswith("# Cats\n")
    for reviewer, kind in reviews.items():
        assert f"> [{kind}] {reviewer}:" in by_agent[reviewer]
    assert (
        " (final)" in by_agent["editor"]
        and "2 review comments resolved" in by_agent["editor"]
    )
    assert text.startswith("# Cats (final)\n")
