"""The data line (image and WAV folders, loader scripts: how the data was read) is the same in the
terminal, Markdown and HTML reports (renderers.base.data_line), escaped for each."""

from __future__ import annotations

import dataclasses
from html import escape

from qaudit.renderers import render
from qaudit.renderers.base import data_line
from qaudit.renderers.markdown import text

SUMMARY = "signed: resized to 16x16 (bilinear), RGB, (x * 0.00392157 - 0.5) / 0.5, NCHW float32"
LINE = f"data: calib photos/ (4 images, 2 classes); eval held/; preprocess {SUMMARY}; classes <cat>=0, dog|x=1"


def _with_sources(report):
    data = {
        **report.data,
        "calib": "photos/ (4 images, 2 classes)",
        "eval": "held/",
        "eval_is_calib": False,
        "sources": {"calib": {"kind": "images", "path": "photos"}, "eval": {"kind": "images", "path": "held"}},
        "preprocess": {"kind": "images", "preset": "signed", "summary": SUMMARY},
        "class_names": ["<cat>", "dog|x"],
    }
    return dataclasses.replace(report, data=data)


def test_every_renderer_shows_the_same_data_line(digits):
    report = _with_sources(digits)
    assert data_line(report.data) == LINE
    assert LINE in render(report, "terminal", width=400)
    md = render(report, "markdown")
    assert text(LINE) in md and "classes \\<cat>=0, dog\\|x=1" in md
    html = render(report, "html")
    assert f"<p class='muted data-line'>{escape(LINE)}</p>" in html and "&lt;cat&gt;=0" in html


def test_no_data_line_without_sources(digits):
    assert data_line(digits.data) is None
    assert "data: " not in render(digits, "markdown")
    assert "data-line" not in render(digits, "html")
