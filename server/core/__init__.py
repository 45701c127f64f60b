"""What every layer shares: settings, typed errors, logs, metrics, supervised tasks and tokens.
Imports no other server package."""
