"""The HTTP API under /v1 (docs/http.md): FastAPI routes over the same layers as the WebSocket
endpoints. Sits beside server/transport and imports none of it."""
