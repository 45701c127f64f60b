"""Documents: the room (one document in memory), its registry and repair from the log, the
update checker (a worker process), the update cost bounds, and the group committer."""
