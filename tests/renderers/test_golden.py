"""Golden files: every renderer's output of the committed reports, frozen in tests/renderers/golden.

The subjects are read from the committed JSON in tests/renderers/data (no model
is run), so the files do not depend on the machine. The terminal is rendered as
plain text at a fixed width; the HTML is compared by its structure (sections,
ids, headings, table headers and cells, figure captions, plot titles), not by
its SVG bytes. A mismatch fails with a unified diff; after a deliberate change::

    python -m pytest tests/renderers --update-goldens
    git diff tests/renderers/golden
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from qaudit import __version__
from qaudit.comparison.result import to_json as comparison_json
from qaudit.renderers import render
from qaudit.renderers.terminal import DEFAULT_WIDTH

#: width of the terminal goldens: the CLI's when it writes to a pipe or a CI log (the tables fit)
WIDTH = DEFAULT_WIDTH


@pytest.mark.parametrize("name", ["digits", "edge"])
def test_terminal(golden, request, name):
    golden(f"{name}.terminal.txt", render(request.getfixturevalue(name), "terminal", width=WIDTH))


@pytest.mark.parametrize("name", ["comparison", "comparison3"])
def test_terminal_comparison(golden, request, name):
    golden(f"{name}.terminal.txt", render(request.getfixturevalue(name), "terminal", width=WIDTH))


@pytest.mark.parametrize("name", ["digits", "edge"])
def test_markdown(golden, request, name):
    golden(f"{name}.md", render(request.getfixturevalue(name), "markdown"))


@pytest.mark.parametrize("name", ["digits", "edge"])
def test_junit(golden, request, name):
    golden(f"{name}.junit.xml", render(request.getfixturevalue(name), "junit"))


@pytest.mark.parametrize("name", ["digits", "edge"])
def test_html_structure(golden, request, name):
    golden(f"{name}.html.txt", skeleton(render(request.getfixturevalue(name), "html")))


def test_html_structure_of_an_overlay(golden, digits, edge):
    golden("overlay.html.txt", skeleton(render([("digits", digits), ("edge", edge)], "html", worst=2)))


def test_html_structure_of_a_comparison(golden, comparison):
    golden("comparison.html.txt", skeleton(render(comparison, "html", worst=1)))


def test_json_round_trips_the_committed_reports(data_dir, digits, edge):
    for name, report in (("digits", digits), ("edge", edge)):
        assert render(report, "json") == (data_dir / f"{name}.json").read_text(encoding="utf-8"), name


def test_the_committed_comparison_is_the_comparison_of_the_committed_reports(data_dir, comparison):
    """data/compare.json is what `qaudit compare --json` writes for the two reports
    (if comparing changed on purpose: python tests/renderers/data/make_data.py)."""
    assert render(comparison, "json") == comparison_json(comparison)
    assert render(comparison, "json") == (data_dir / "compare.json").read_text(encoding="utf-8")


# ------------------------------------------------------------------ HTML skeleton

#: elements whose text joins their parent's line
INLINE = {"b", "br", "button", "code", "em", "i", "small", "span", "strong"}
#: elements left out, with their content (scripts, styles, metadata)
SKIP = {"script", "style", "meta", "link"}
VOID = {"meta", "link", "br", "img", "input", "hr", "wbr", "col"}
#: attributes kept in the skeleton (ids and classes, sort keys, header tooltips, links)
KEEP = ("data-v", "data-i", "data-table", "data-col", "title", "href", "lang")


class _Node:
    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children = tag, attrs, []


class _Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = _Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(_Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def _text(node) -> str:
    if isinstance(node, str):
        return node
    if node.tag in SKIP:
        return ""
    return "".join(_text(c) for c in node.children if isinstance(c, str) or c.tag in INLINE)


def _label(node: _Node) -> str:
    out = node.tag
    if node.attrs.get("id"):
        out += f"#{node.attrs['id']}"
    if node.attrs.get("class"):
        out += "".join(f".{c}" for c in node.attrs["class"].split())
    for k in KEEP:
        if k in node.attrs and not (k == "title" and node.tag != "th"):
            out += f" [{k}={node.attrs[k]}]"
    return out


def _dump(node: _Node, depth: int, lines: list[str]) -> None:
    if node.tag in SKIP:
        return
    if node.tag == "svg":  # the plot as a screen reader gets it: its title and description, not its drawing
        parts = {c.tag: _text(c) for c in node.children if not isinstance(c, str) and c.tag in ("title", "desc")}
        lines.append("  " * depth + f"{_label(node)}: {parts.get('title', '')}")
        lines.append("  " * (depth + 1) + f"desc: {parts.get('desc', '')}")
        return
    text = re.sub(r"\s+", " ", _text(node)).strip()
    lines.append("  " * depth + _label(node) + (f": {text}" if text else ""))
    for c in node.children:
        if not isinstance(c, str) and c.tag not in INLINE:
            _dump(c, depth + 1, lines)


def skeleton(html: str) -> str:
    """The structure of an HTML page, one element per line, indented by depth (see the module docstring)."""
    html = html.replace(f"qaudit {__version__}", "qaudit VERSION")  # a release does not change the goldens
    tree = _Tree()
    tree.feed(html)
    tree.close()
    lines: list[str] = []
    for c in tree.root.children:
        if not isinstance(c, str):
            _dump(c, 0, lines)
    return "\n".join(lines) + "\n"
