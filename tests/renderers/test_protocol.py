"""The renderer protocol and registry: qaudit.renderers.render(subject, fmt, *, gates, to, **options).

Rendered from the committed reports in tests/renderers/data (no model is run).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from qaudit import output
from qaudit.comparison.result import Comparison
from qaudit.errors import ConfigError, OutputError
from qaudit.renderers import FORMATS, SUBJECTS, Renderer, get_renderer, render
from qaudit.renderers.html import default_label
from qaudit.report import Report, to_json
from qaudit.runs import MultiReport

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_one_registry_of_renderers_with_one_protocol():
    assert FORMATS == ("terminal", "json", "markdown", "junit", "html")
    kinds = {}
    for fmt in FORMATS:
        r = get_renderer(fmt)
        assert isinstance(r, Renderer) and r.name == fmt
        assert r.subjects and r.subjects <= set(SUBJECTS)
        kinds[fmt] = set(r.subjects)
    assert kinds == {
        "terminal": {"report", "comparison", "runs"},
        "json": {"report", "comparison", "runs"},
        "markdown": {"report", "runs"},
        "junit": {"report", "runs"},
        "html": {"report", "reports", "comparison", "runs"},
    }


def test_every_format_renders_every_subject_it_accepts(digits, edge, comparison):
    subjects = {"report": edge, "reports": [("a", digits), ("b", edge)], "comparison": comparison}
    subjects["runs"] = MultiReport((("a", digits), ("b", edge)))
    for fmt in FORMATS:
        for kind in get_renderer(fmt).subjects:
            text = render(subjects[kind], fmt)
            assert isinstance(text, str) and text.endswith("\n") and len(text) > 100, (fmt, kind)


def test_unknown_format_is_a_one_line_config_error_listing_the_formats(digits):
    with pytest.raises(ConfigError) as e:
        render(digits, "pdf")
    msg = str(e.value)
    assert "\n" not in msg and "'pdf'" in msg and "terminal, json, markdown, junit, html" in msg


@pytest.mark.parametrize(
    "fmt, kind, valid",
    [
        ("junit", "comparison", "terminal, json, html"),
        ("markdown", "comparison", "terminal, json, html"),
        ("json", "reports", "html"),
        ("terminal", "reports", "html"),
    ],
)
def test_a_format_that_cannot_render_the_subject_lists_the_ones_that_can(digits, comparison, fmt, kind, valid):
    subject = comparison if kind == "comparison" else [("a", digits), ("b", digits)]
    with pytest.raises(ConfigError) as e:
        render(subject, fmt)
    msg = str(e.value)
    assert "\n" not in msg and f"the {fmt} format cannot render" in msg and msg.endswith(f": {valid}")


def test_misuse_of_the_api(digits, comparison):
    with pytest.raises(TypeError, match="worst"):
        render(digits, "junit", worst=3)  # an option the renderer does not take: as for any call
    with pytest.raises(TypeError, match="cannot render a dict"):
        render({"not": "a report"}, "json")
    with pytest.raises(ConfigError, match="empty"):
        render([], "html")
    with pytest.raises(ConfigError, match="single report"):
        render(comparison, "html", gates=digits.gates)
    with pytest.raises(ConfigError, match="to= or console="):
        render(digits, "terminal", to="-", console=Console(file=io.StringIO()))


@pytest.mark.parametrize("fmt", ["terminal", "json", "markdown", "junit", "html"])
def test_gates_replace_the_reports_own_verdict(digits, edge, fmt):
    """gates=None shows report.gates; gates=G shows G, as if the report carried it."""
    assert render(digits, fmt) == render(digits, fmt, gates=None)
    assert render(digits, fmt, gates=edge.gates) == render(dataclasses.replace(digits, gates=edge.gates), fmt)
    assert render(digits, fmt, gates=edge.gates) != render(digits, fmt)


def test_json_is_the_versioned_report(digits, data_dir):
    assert render(digits, "json") == to_json(digits) == (data_dir / "digits.json").read_text(encoding="utf-8")


def test_html_of_a_report_is_its_labelled_page(digits):
    assert render(digits, "html") == render([(default_label(digits), digits)], "html")
    assert render(digits, "html", worst=1) != render(digits, "html")


# ------------------------------------------------------------------ writing


def test_to_a_path_writes_the_returned_text(tmp_path, digits):
    out = tmp_path / "s.md"
    text = render(digits, "markdown", to=out)
    assert out.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.md"]


def test_to_dash_writes_stdout(capsys, digits):
    text = render(digits, "junit", to="-")
    assert capsys.readouterr().out == text


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, digits):
    out = tmp_path / "r.xml"
    out.write_text("old", encoding="utf-8")

    def full(path):  # the temporary file is written, then the disk is full
        assert Path(path).stat().st_size > 0
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "_public_mode", full)
    with pytest.raises(OutputError, match="No space left on device"):
        render(digits, "junit", to=out)
    monkeypatch.undo()
    assert out.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.xml"]


def test_a_failed_render_writes_nothing(tmp_path, monkeypatch, digits):
    out = tmp_path / "r.html"
    out.write_text("old", encoding="utf-8")
    monkeypatch.setattr(type(get_renderer("html")), "render", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        render(digits, "html", to=out)
    assert out.read_text(encoding="utf-8") == "old" and len(list(tmp_path.iterdir())) == 1


def test_to_a_missing_directory_is_a_config_error(tmp_path, digits):
    with pytest.raises(ConfigError, match="does not exist"):
        render(digits, "markdown", to=tmp_path / "no" / "s.md")


# ------------------------------------------------------------------ terminal


def test_terminal_text_is_plain_at_the_given_width_whatever_the_environment(monkeypatch, edge, comparison):
    for subject in (edge, comparison):
        text = render(subject, "terminal", width=100)
        assert "\x1b" not in text
        lines = [x for x in text.splitlines() if not x.startswith(("PASS: ", "FAIL: "))]  # the verdict: one line
        assert max(len(line) for line in lines) <= 100
        assert any(len(line) == 100 for line in lines)  # tables use the width
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "40")
        monkeypatch.setenv("TERM", "xterm-256color")
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert render(subject, "terminal", width=100) == text
        monkeypatch.undo()
    assert render(edge, "terminal") == render(edge, "terminal", width=200)  # the default width


def test_terminal_streams_to_a_console_in_colour_with_the_same_characters(edge, comparison):
    for subject in (edge, comparison):
        buf = io.StringIO()
        con = Console(file=buf, width=120, force_terminal=True, color_system="truecolor", _environ={})
        assert render(subject, "terminal", console=con) == ""
        coloured = buf.getvalue()
        assert "\x1b[" in coloured
        assert ANSI.sub("", coloured) == render(subject, "terminal", width=120)


def test_terminal_quiet_is_the_verdict_line_only(digits, edge, comparison):
    assert render(edge, "terminal", quiet=True).startswith("FAIL: 12 of 40 gate check(s) failed, 1 skipped: ")
    assert render(edge, "terminal", quiet=True, width=40).count("\n") == 1  # one line, however long
    assert render(digits, "terminal", quiet=True) == "PASS: 28 gate check(s) passed, 1 skipped\n"
    assert render(dataclasses.replace(digits, gates=None), "terminal", quiet=True) == ""
    assert render(comparison, "terminal", quiet=True) == ""


def test_subjects_are_the_committed_ones(digits, edge, comparison):
    assert isinstance(digits, Report) and isinstance(edge, Report) and isinstance(comparison, Comparison)
    assert digits.gates.passed and not edge.gates.passed
