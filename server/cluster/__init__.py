"""Nodes telling each other: the LISTEN/NOTIFY hint formats and fan-out, workspace events, and
presence (in process or in Redis)."""
