"""Connections: the shared lifecycle (accept, authenticate, read, send, close), the update
pipeline, the agent endpoint (/ws), the y-websocket endpoint (/yjs) and its awareness relay."""
