"""Text edits (insert, delete, replace the whole text) turned into one Yjs update of a document.

Indexes and lengths count Unicode code points (Python `str` indexes), whatever the text holds;
pycrdt counts UTF-8 bytes and Yjs in JavaScript UTF-16 units, so they are converted here. Each
edit's index is read against the text as the edits before it left it.

`replace` sends only the difference: the common prefix and suffix of the old and new text are
kept, the middle deleted and the new middle inserted. Text a concurrent editor typed outside
that middle, and its cursor (a Yjs relative position, anchored to items), stay where they are.

The update is made by a scratch pycrdt document holding the room's state under a fresh client
id, so it is an ordinary client update to the room (checked and applied like any other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pycrdt import Doc, Text

from crdt.document import CONTENT, Document
from server.core.errors import ErrorCode, TandemError


@dataclass(frozen=True, slots=True)
class Insert:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class Delete:
    index: int
    length: int


@dataclass(frozen=True, slots=True)
class Replace:
    text: str


Edit = Insert | Delete | Replace


def _utf8(text: str, index: int) -> int:
    return len(text[:index].encode())


def _out_of_range(position: int, field: str, value: int, length: int) -> TandemError:
    return TandemError(
        ErrorCode.INVALID_MESSAGE,
        f"edits.{position}.{field}: {value} is past the text's end ({length} code points)",
        {"errors": [{"field": f"edits.{position}.{field}", "type": "out_of_range",
                     "message": f"must be at most {length} (code points)"}]},
    )  # fmt: skip


def minimal_replace(old: str, new: str) -> tuple[int, int, str]:
    """(index, length to delete, text to insert) turning `old` into `new`, in code points: the
    common prefix and suffix are kept."""
    most = min(len(old), len(new))
    prefix = 0
    while prefix < most and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < most - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    return prefix, len(old) - prefix - suffix, new[prefix : len(new) - suffix]


def build_update(document: Document, edits: Sequence[Edit]) -> bytes | None:
    """One update applying `edits` to `document`'s text; None when they change nothing. Raises
    `invalid_message` (nothing built) for an index or range past the text's end."""
    doc: Doc = Doc()
    text = Text()
    doc[CONTENT] = text
    doc.apply_update(document.encode_state())
    before = doc.get_state()
    current = str(text)
    changed = False
    with doc.transaction():
        for position, edit in enumerate(edits):
            if isinstance(edit, Replace):
                index, length, middle = minimal_replace(current, edit.text)
            elif isinstance(edit, Insert):
                index, length, middle = edit.index, 0, edit.text
                if index > len(current):
                    raise _out_of_range(position, "insert.index", index, len(current))
            else:
                index, length, middle = edit.index, edit.length, ""
                if index > len(current):
                    raise _out_of_range(position, "delete.index", index, len(current))
                if index + length > len(current):
                    raise _out_of_range(
                        position, "delete.length", index + length, len(current)
                    )
            start = _utf8(current, index)
            changed = changed or bool(length or middle)
            if length:
                del text[start : start + _utf8(current[index:], length)]
            if middle:
                text.insert(start, middle)
            current = current[:index] + middle + current[index + length :]
    if not changed:
        return None
    return doc.get_update(before)
