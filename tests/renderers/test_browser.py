"""The HTML report in a real browser: Debian's headless Chromium, no network.

One Chromium process opens three pages (the sample audit's own HTML, the
sample with no unmatched tensors, and an overlay of the sample quantized with
uint8 and int8 weights) at 1280 CSS px and checks that each loads without
console errors, exceptions, CSP violations or network requests, that every
plot is present, laid out and drawn, that nothing overflows 1280 px, and that
the table sorts. Full-page screenshots are saved as test artifacts in
``tests/artifacts/`` (git-ignored; ``QAUDIT_ARTIFACTS`` overrides the folder).

Without Chromium the test is skipped, except in CI (``CI`` set), where it
fails: ``.ci/run`` installs Debian's ``chromium`` package.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from qaudit.renderers import render
from qaudit.renderers.html import plot_ids
from qaudit.report import from_dict

from ..browser import Chromium, chromium_path

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("QAUDIT_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
WIDTH = 1280

#: per plot: drawn size, and the marks inside it (series paths with a non-empty bounding box, bars)
PLOT_STATE = """
Array.from(document.querySelectorAll('svg.plot')).map(function (s) {
  var r = s.getBoundingClientRect();
  var marks = Array.from(s.querySelectorAll('path.line, path.bars')).filter(function (p) {
    var b = p.getBBox(); return p.getAttribute('d').length > 1 && (b.width > 0 || b.height > 0);
  });
  var title = s.querySelector('title');
  return {id: s.id, w: r.width, h: r.height, marks: marks.length,
          points: s.querySelectorAll('g.series > circle, g.series > rect, g.series > path:not(.line)').length,
          title: title ? title.textContent : ''};
})
"""

#: the SQNR column of the first layer table after clicking "worst SQNR first", then "graph order"
SORT_CHECK = """
(function () {
  var t = document.getElementById('layers-0');
  var col = +document.querySelector('button[data-table="layers-0"]').getAttribute('data-col');
  function order() { return Array.from(t.tBodies[0].rows).map(function (r) { return +r.getAttribute('data-i'); }); }
  function sqnr() { return Array.from(t.tBodies[0].rows).map(function (r) { return parseFloat(r.cells[col].getAttribute('data-v')); }); }
  document.querySelector('button[data-table="layers-0"][data-col="' + col + '"]').click();
  var worst = sqnr(), worstOrder = order();
  t.tHead.rows[0].cells[col].querySelector('button').click();
  var reversed = sqnr();
  document.querySelector('button[data-table="layers-0"][data-col="0"]').click();
  return {worst: worst, worstOrder: worstOrder, reversed: reversed, graph: order()};
})()
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but Chromium is missing: .ci/run must install Debian's chromium package")
        pytest.skip("Chromium not installed (apt-get install chromium); CI runs this test")
    return path


@pytest.fixture(scope="module")
def pages(sample_run, sample_report_json, sample_int8_report_json, tmp_path_factory):
    """(name, path of the HTML file, the reports it shows) for every page the browser opens."""
    d = tmp_path_factory.mktemp("html_pages")
    rep = from_dict(sample_report_json)
    rep8 = from_dict(sample_int8_report_json)
    assert rep.unmatched, "the sample is expected to have unmatched (fused) tensors"
    no_unmatched = d / "no-unmatched.html"
    no_unmatched.write_text(render([("model.onnx", dataclasses.replace(rep, unmatched=()))], "html"), encoding="utf-8")
    overlay = d / "overlay.html"
    pair = [("uint8 weights", rep), ("int8 weights", rep8)]
    overlay.write_text(render(pair, "html"), encoding="utf-8")
    return [
        ("sample", sample_run.html_path, [("model.onnx", rep)]),
        ("no-unmatched", no_unmatched, [("model.onnx", rep)]),
        ("overlay", overlay, pair),
    ]


def test_html_in_headless_chromium(chromium, pages, artifacts):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Chromium(chromium) as browser:
        for name, path, reports in pages:
            page = browser.open(path, width=WIDTH)
            assert page.problems() == [], name
            assert page.evaluate("document.body.getAttribute('data-js-errors')") == "0", name
            assert page.evaluate("document.body.getAttribute('data-ready')") == "1", name  # the script ran to its end
            # nothing but the file itself was requested: no CDN, no network
            assert page.requests() == [path.resolve().as_uri()], name

            # every plot is there, laid out at a readable size, and drawn
            state = page.evaluate(PLOT_STATE)
            assert [s["id"] for s in state] == plot_ids(reports), name
            for s in state:
                assert s["w"] >= 560 and s["h"] >= 280, (name, s)
                assert s["marks"] >= 1 and s["title"], (name, s)
                if not s["id"].startswith("hist-"):
                    assert s["points"] >= 2 * len(reports), (name, s)
            # readable at 1280 px: no horizontal scrolling, two plots side by side
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH, name
            overflow = page.evaluate(
                "Array.from(document.querySelectorAll('.scroll')).map(d => d.scrollWidth - d.clientWidth)"
            )
            assert overflow and max(overflow) <= 0, (name, overflow)  # the tables need no sideways scrolling
            lefts = page.evaluate(
                "Array.from(document.querySelectorAll('figure.layerplot')).map(f => Math.round(f.getBoundingClientRect().left))"
            )
            assert len(set(lefts)) == 2, (name, lefts)

            # the table sorts: worst SQNR first, reverse, and back to graph order
            sort = page.evaluate(SORT_CHECK)
            finite = [v for v in sort["worst"] if v == v]
            assert finite == sorted(finite), (name, sort)
            assert sort["worstOrder"][0] == reports[0][1].worst_layers(1)[0].index, name
            assert [v for v in sort["reversed"] if v == v] == sorted(finite, reverse=True), name
            assert sort["graph"] == sorted(sort["graph"]), name

            text = page.evaluate("document.body.innerText")
            if name == "no-unmatched":
                assert "Unmatched tensors: none" in text
            else:
                assert "without a quantized twin" in text
            assert page.problems() == [], name  # clicking raised nothing either

            shot = ARTIFACTS / f"html-{name}.png"
            w, h = page.screenshot(shot)
            assert w == WIDTH and h > 2000 and shot.stat().st_size > 50_000, (name, w, h)
            artifacts.append(shot)


def test_the_browser_check_catches_errors_and_requests(chromium, tmp_path):
    """The checks above would see a broken page: a console error, an exception, a blocked fetch."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'script-src \'unsafe-inline\'; img-src data:"></head><body data-js-errors="0">'
        "<img src=\"http://example.invalid/x.png\"><script>console.error('boom'); undefined_function();</script>"
        "</body></html>",
        encoding="utf-8",
    )
    with Chromium(chromium) as browser:
        page = browser.open(bad)
        problems = " | ".join(page.problems())
        assert "console.error" in problems and "boom" in problems
        assert "undefined_function" in problems
        assert "Content Security Policy" in problems  # the image was refused before any network access
