"""Tandem server: the Starlette app, the realtime protocol, persistence and fan-out."""
