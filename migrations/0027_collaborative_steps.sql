-- migrate:up
-- Collaborative workflow steps (docs/protocol.md section 12.9): a step done by several named
-- agents has one task per agent in each attempt. `collaborator` is the agent a task was made
-- for (it stays when the task is delegated); null for every other task. One task per
-- (execution, step, attempt, collaborator) replaces one per (execution, step, attempt).
ALTER TABLE tasks ADD COLUMN collaborator varchar(255);
ALTER TABLE tasks ADD CONSTRAINT tasks_collaborator_of_a_step CHECK (collaborator IS NULL OR execution_id IS NOT NULL);
ALTER TABLE tasks DROP CONSTRAINT tasks_execution_step_attempt_key;
CREATE UNIQUE INDEX tasks_execution_step_attempt_key
    ON tasks (execution_id, step_id, attempt, (coalesce(collaborator, '')));

-- migrate:down
DROP INDEX tasks_execution_step_attempt_key;
ALTER TABLE tasks ADD CONSTRAINT tasks_execution_step_attempt_key UNIQUE (execution_id, step_id, attempt);
ALTER TABLE tasks DROP CONSTRAINT tasks_collaborator_of_a_step;
ALTER TABLE tasks DROP COLUMN collaborator;
