"""Structured logging: structlog configured once, every line an `event` name plus bound ids.

Lines go to stderr as JSON (`log_json`) or as readable console output. Records from the stdlib
`logging` module (uvicorn, asyncpg) pass through the same formatter, so they share the format:
their logger name becomes the `event` and their text the `message`. Imports nothing of Tandem.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# stdlib loggers whose name is not a good event name on its own.
_FOREIGN_EVENTS = {"uvicorn.error": "uvicorn", "uvicorn.asgi": "uvicorn", "py.warnings": "python.warning"}


def _name_foreign_event(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's text is free-form: keep it as `message`, name the event by its logger."""
    record = event_dict.get("_record")
    if record is None or event_dict.get("_from_structlog", False):
        return event_dict
    args = event_dict.pop("positional_args", None)
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        # uvicorn's access line: (client, method, path with query, HTTP version, status).
        client, method, path, _, status = args
        event_dict.update(event="http.request", client=client, method=method, path=path, status=status)
        return event_dict
    event_dict["message"] = event_dict.get("event")
    event_dict["event"] = _FOREIGN_EVENTS.get(record.name, record.name)
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "event")
# Browsers pass the token in the query string (docs/protocol.md#21); it never reaches a log.
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']+")


def _redact_tokens(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    for key in ("message", "path", "event"):
        value = event_dict.get(key)
        if isinstance(value, str) and "token=" in value:
            event_dict[key] = _TOKEN_IN_QUERY.sub(r"\1[redacted]", value)
    return event_dict


def _order_keys(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Timestamp, level and event first: lines read the same way in JSON and on the console."""
    head = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    return {**head, **event_dict}


def configure(level: str = "info", json: bool = True) -> None:
    """Route structlog and the stdlib root logger through one stderr handler.

    Safe to call again (tests, a second CLI command in one process): it replaces the handler
    it installed before instead of adding another.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
        tail: list[Processor] = [structlog.processors.format_exc_info, _order_keys]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        tail = []

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _name_foreign_event, _redact_tokens],
        pass_foreign_args=True,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("tandem")

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "tandem"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library warnings (e.g. from imports) become log lines in the same format.
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def log_stream() -> TextIO:
    """The stream log lines go to: the handler `configure` installed, else stderr (also when
    that handler's stream was closed under it, as an embedding program may do). Whether it is a
    terminal decides the form of the server's start output (server/welcome.py)."""
    for handler in logging.getLogger().handlers:
        is_ours = handler.get_name() == "tandem" and isinstance(handler, logging.StreamHandler)
        if is_ours and not getattr(handler.stream, "closed", False):
            return handler.stream  # type: ignore[no-any-return]
    return sys.stderr


def get_logger(name: str = "tandem", **ids: Any) -> structlog.stdlib.BoundLogger:
    """A logger with `ids` (e.g. `conn_id`, `doc_id`) bound to every line it writes."""
    # Stays a lazy proxy (no `.bind()` here), so module-level loggers created at import time
    # pick up the configuration made later by `configure`.
    return structlog.stdlib.get_logger(name, **ids)


def bind_ids(**ids: Any) -> None:
    """Bind ids (e.g. `node_id`) to every line logged from this context and the tasks it starts."""
    structlog.contextvars.bind_contextvars(**ids)
