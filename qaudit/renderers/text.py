"""User strings made safe to print: control characters shown, never obeyed (pure; imports no onnxruntime).

Model, node and tensor names, paths and globs come from the user's files and
command line. Printed raw, an escape sequence in a node name could erase the
verdict line and print a fake PASS, a newline in a path could forge a second
error line, a ``\\r`` could split a Markdown table row, and a bidi override
could make a name read backwards. :func:`printable` replaces every such
character with its Python escape (``\\x1b``, ``\\n``, ``\\u202e``), so the
name stays recognisable and nothing is lost silently.

Every renderer but the JSON one sees a :func:`printable_copy` of its subject
(:func:`qaudit.renderers.base.render`), and the CLI passes its error lines
through :func:`printable`.
"""

from __future__ import annotations

import dataclasses
import re

#: C0 controls, DEL, C1 controls, and the unicode bidirectional embeddings, overrides,
#: isolates and marks (U+061C, U+200E/F, U+202A-E, U+2066-9), plus the line and
#: paragraph separators (U+2028/9) that some terminals and editors treat as newlines
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    ch = m.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """``str(text)`` with every control, bidi-override and line-separator character written as its escape."""
    return _UNSAFE.sub(_escape, str(text))


def is_printable(text: str) -> bool:
    return _UNSAFE.search(text) is None


def printable_copy(value):
    """``value`` (a report, a comparison, or any nesting of dataclasses, dicts, lists and
    tuples) with every string passed through :func:`printable`; unchanged objects are reused."""
    if isinstance(value, str):
        return value if is_printable(value) else printable(value)
    if isinstance(value, (list, tuple)):
        items = [printable_copy(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if type(value) in (list, tuple) else type(value)(*items)
    if isinstance(value, dict):
        items = {printable_copy(k): printable_copy(v) for k, v in value.items()}
        if all(a is b for a, b in zip(items, value)) and all(items[k] is v for k, v in zip(items, value.values())):
            return value
        return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            old = getattr(value, f.name)
            new = printable_copy(old)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value


__all__ = ["is_printable", "printable", "printable_copy"]
