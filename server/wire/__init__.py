"""Pure: the wire protocol's message models (what docs/protocol.md is checked against), its field
types and the y-websocket (y-protocols) codec. No I/O."""
