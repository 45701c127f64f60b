"""Workspaces and their coordination: the directory of workspaces, members and documents,
roles, locks, workspace state, tasks, and the events they publish."""
