"""renderers.text: control characters in user strings are shown as escapes, never obeyed."""

from __future__ import annotations

import dataclasses

import pytest

from qaudit.renderers.markdown import code, text
from qaudit.renderers.text import printable, printable_copy
from qaudit.report import LayerRow


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain /conv1/Conv", "plain /conv1/Conv"),
        ("a\x1b[2Kb", "a\\x1b[2Kb"),  # ESC (C0)
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x00\x07\x7f", "\\x00\\x07\\x7f"),  # NUL, BEL, DEL
        ("\x9b2J\x85", "\\x9b2J\\x85"),  # C1: CSI, NEL
        ("abc\u202edef\u2066\u200f", "abc\\u202edef\\u2066\\u200f"),  # bidi override, isolate, mark
        ("line\u2028sep", "line\\u2028sep"),
        ("ünïcødé 名前 ✓", "ünïcødé 名前 ✓"),  # printable unicode is kept
    ],
)
def test_printable(raw, shown):
    assert printable(raw) == shown


def test_printable_copy_escapes_every_string_and_reuses_clean_objects():
    clean = LayerRow(index=0, name="/conv/Conv", op_type="Conv", tensor="x", quant_tensor="x_q", fused=("relu",))
    assert printable_copy(clean) is clean
    evil = dataclasses.replace(clean, name="a\x1bb", fused=("r\nelu",))
    got = printable_copy(evil)
    assert (got.name, got.fused, got.op_type) == ("a\\x1bb", ("r\\nelu",), "Conv")
    assert printable_copy({"k\r": ["v\x1b", 1.5, None]}) == {"k\\r": ["v\\x1b", 1.5, None]}


def test_markdown_text_and_code_spans():
    assert text("<img src=x onerror=alert(1)>[a](javascript:x) a|b `c` &amp;") == (
        "\\<img src=x onerror=alert(1)>\\[a\\](javascript:x) a\\|b \\`c\\` \\&amp;"
    )
    assert code("a|b") == "`a\\|b`"
    assert code("x``y") == "```x``y```"
    assert code("`edge`") == "`` `edge` ``"
    assert code("one\rtwo\nthree") == "`one two three`"
