"""Terminal and report injection (issue 16, item 13): node and tensor names, paths and globs
holding escape sequences, ``\\r``, ``\\n``, backticks, pipes, HTML and links are shown, never obeyed.

The model is the bundled sample with every node and tensor renamed: the names start with an
escape sequence that erases the line and moves the cursor up (a fake PASS would follow).
"""

from __future__ import annotations

import html.parser
import re
import xml.etree.ElementTree as ET

import onnx
import pytest

from ..conftest import SAMPLE_CALIB, SAMPLE_MODEL
from .test_bad_input import assert_user_error

pytestmark = pytest.mark.slow

EVIL = "\x1b[2K\x1b[1A\r\x9b2J|`x``<img src=x onerror=alert(1)>[a](javascript:alert(1))\u202e\n"
#: the characters no line of terminal output may hold
RAW = ("\x1b", "\r", "\x9b", "\u202e")
GLOB = "<img src=x onerror=alert(1)>[a](javascript:alert(1))"


def hostile_model(path):
    """The sample with node names ``EVIL + i`` and every internal tensor and the output renamed too."""
    m = onnx.load(str(SAMPLE_MODEL))
    g = m.graph
    keep = {i.name for i in g.input} | {t.name for t in g.initializer}
    names = {}
    for i, n in enumerate(g.node):
        n.name = f"{EVIL}node{i}"
        for k, o in enumerate(n.output):
            names[o] = f"{EVIL}t{i}.{k}"
    for n in g.node:
        n.input[:] = [names.get(x, x) if x not in keep else x for x in n.input]
        n.output[:] = [names[x] for x in n.output]
    for v in list(g.output) + list(g.value_info):
        v.name = names.get(v.name, v.name)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def outside_code_spans(line: str) -> str:
    return re.sub(r"(`+)(.+?)\1", "", line)


def test_hostile_names_are_shown_never_obeyed(run_cli, tmp_path):
    model = hostile_model(tmp_path / "evil.onnx")
    out = {k: tmp_path / f"r.{k}" for k in ("md", "xml", "html", "json")}
    proc = run_cli(
        model,
        "--calib",
        SAMPLE_CALIB,
        "--min-layer-sqnr",
        "100",
        "--min-layer-sqnr",
        f"{GLOB}=10",
        "--markdown",
        out["md"],
        "--junit",
        out["xml"],
        "--html",
        out["html"],
        "--json",
        out["json"],
    )
    assert proc.returncode == 1, proc.stderr  # the 100 dB gate fails
    assert proc.stderr == ""
    for ch in RAW:
        assert ch not in proc.stdout, repr(ch)
    assert "\\x1b[2K\\x1b[1A\\r\\x9b2J" in proc.stdout  # the name is there, escaped
    assert proc.stdout.rstrip("\n").splitlines()[-1].startswith("FAIL")  # the verdict stays the last line

    md = out["md"].read_text(encoding="utf-8")
    for ch in RAW:
        assert ch not in md, repr(ch)
    for line in md.splitlines():
        rest = outside_code_spans(line)
        # no tag, no link outside code spans: only backslash-escaped ones
        assert not re.search(r"(?<!\\)<img|(?<!\\)\]\(javascript", rest), line
    tables: list[list[str]] = []
    for prev, line in zip(["", *md.splitlines()], md.splitlines()):
        if line.startswith("|"):
            if not prev.startswith("|"):
                tables.append([])
            tables[-1].append(line)
    for table in tables:  # every row has the header's cells: none split, none merged
        cells = {len(re.findall(r"(?<!\\)\|", outside_code_spans(row))) for row in table}
        assert len(cells) == 1, table
    rows = [line for line in md.splitlines() if line.startswith("| ") and "node" in line]
    assert rows and all("\\x1b[2K" in r for r in rows)
    assert "\\<img src=x onerror=alert(1)>\\[a\\](javascript:alert(1))" in md  # the glob, escaped, in a note

    page = out["html"].read_text(encoding="utf-8")
    assert "<img src=x" not in page and "\x1b" not in page

    class Tags(html.parser.HTMLParser):
        found = []

        def handle_starttag(self, tag, attrs):
            self.found.append(tag)

    parser = Tags()
    parser.feed(page)
    assert "img" not in parser.found

    root = ET.parse(out["xml"]).getroot()  # valid XML
    names = [c.get("name") for c in root.iter("testcase")]
    assert any("\\x1b[2K" in n for n in names), names[:3]

    # the JSON keeps the names exactly (JSON escapes them itself)
    import json

    report = json.loads(out["json"].read_text(encoding="utf-8"))
    assert any(r["name"] == f"{EVIL}node0" for r in report["layers"])


def test_a_newline_in_a_path_cannot_forge_a_second_error_line(run_cli, tmp_path):
    d = tmp_path / "x\nqaudit: PASS \x1b[32mall gates pass"
    d.mkdir()
    proc = run_cli(d / "missing.onnx", "--calib", SAMPLE_CALIB)
    line = assert_user_error(proc, "not found")
    assert "\\nqaudit: PASS \\x1b[32m" in line


def test_an_exclude_glob_is_escaped_in_its_error(run_cli):
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--exclude", "\x1b[2Kno/such\rnode")
    line = assert_user_error(proc, "no/such")
    assert "\x1b" not in line and "\r" not in line
    assert "\\x1b[2Kno/such\\rnode" in line
