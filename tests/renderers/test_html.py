"""The HTML report: content, determinism, self-containment, overlays (no browser here; see test_browser.py).

Most tests read the HTML written by the shared sample audit (``sample_run``,
which runs with ``--html``) or render the shared JSON reports in-process.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qaudit.errors import ConfigError
from qaudit.renderers import render
from qaudit.renderers.html import ISOLATED_MISSING, plot_ids
from qaudit.renderers.svgplot import PALETTE
from qaudit.report import UnmatchedTensor, from_dict, from_json

REPO = Path(__file__).resolve().parents[2]
SAMPLE_MODEL = REPO / "samples" / "digits" / "model.onnx"
SAMPLE_CALIB = REPO / "samples" / "digits" / "calib"

#: every plot the sample's page must show: the layerwise plots, then the 3 worst layers' histograms
LAYER_PLOT_IDS = [
    "weight-range",
    "weight-precision",
    "act-range",
    "act-precision",
    "sqnr",
    "qmse",
    "decomposition",
    "clip",
]
#: the sample's page stays small (docs/html-report.md states the size)
MAX_SAMPLE_BYTES = 150_000


@pytest.fixture(scope="module")
def sample_html(sample_run) -> str:
    return sample_run.html_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sample_report(sample_report_json):
    return from_dict(sample_report_json)


@pytest.fixture(scope="module")
def int8_report(sample_int8_report_json):
    return from_dict(sample_int8_report_json)


def svgs(html: str) -> dict[str, str]:
    """{plot id: the <svg> element's markup}."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<svg class="plot" id="([^"]+)".*?</svg>', html, flags=re.S)}


class _Strict(HTMLParser):
    """Collects tags, and fails on unbalanced non-void elements."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "wbr", "area", "base", "col", "source", "track", "embed"}
    SELF = {"circle", "rect", "path", "line"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def parse(html: str) -> _Strict:
    p = _Strict()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], p.stack
    return p


# ------------------------------------------------------------ the audit's page


def test_audit_writes_html(sample_run, sample_html, sample_report_json):
    assert sample_html.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert sample_run.proc.returncode == 0 and sample_run.proc.stderr == ""
    size = sample_run.html_path.stat().st_size
    assert 10_000 < size < MAX_SAMPLE_BYTES, size
    m = sample_report_json["model"]
    assert m["sha256"] in sample_html and m["path"] in sample_html
    for key in ("onnxruntime", "onnx", "numpy", "python", "created"):
        assert f"<dt>{key}</dt><dd>{sample_report_json['meta'][key]}</dd>" in sample_html, key
    for key in sample_report_json["settings"]:
        assert f"<dt>{key}</dt>" in sample_html, key
    assert "Gates: none evaluated" in sample_html
    parse(sample_html)


def test_html_from_saved_json_equals_html_of_the_audit(run_cli, sample_run, sample_html, tmp_path):
    """`qaudit report saved.json --html` runs no model and writes the very same bytes."""
    saved = tmp_path / "saved.json"
    saved.write_text(sample_run.json_path.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "again.html"
    p = run_cli("report", saved, "--html", out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""
    assert out.read_bytes() == sample_run.html_path.read_bytes()
    # and in-process, from the parsed report
    rep = from_json(saved.read_text(encoding="utf-8"))
    assert render(rep, "html") == sample_html


def test_rendering_is_deterministic(sample_report):
    a = render([("m", sample_report)], "html")
    assert a == render([("m", sample_report)], "html")


def test_page_is_self_contained(sample_html):
    """Opens offline: nothing to fetch, scripts and styles inline, and a CSP that forbids loading anything."""
    p = parse(sample_html)
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", sample_html, flags=re.I)
    for tag, attrs in p.tags:
        assert "src" not in attrs, (tag, attrs)
        if tag == "link":
            assert attrs.get("rel") == "icon" and attrs.get("href") == "data:,", attrs
        assert not (attrs.get("href") or "#").startswith(("http", "//", "file")), attrs
    assert "Content-Security-Policy" in sample_html and "default-src 'none'" in sample_html
    assert [t for t, _ in p.tags].count("script") == 2


def test_every_plot_is_present_and_drawn(sample_html, sample_report):
    plots = svgs(sample_html)
    worst = [f"hist-0-{r.index}" for r in sample_report.worst_layers(3)]
    assert list(plots) == LAYER_PLOT_IDS + worst == plot_ids([("m", sample_report)])
    for pid, svg in plots.items():
        if pid.startswith("hist-"):
            assert re.search(r'<path class="bars" d="M[^"]+"', svg), pid
            assert svg.count('class="vline"') == 4, pid  # q_min, q_max, a_lo, a_hi
            assert re.search(r'<path class="rug" d="M[^"]+"', svg), pid
        else:
            lines = re.findall(r'<path class="line" d="(M[^"]*)"', svg)
            assert lines and all("L" in d for d in lines), pid  # every series has at least 2 points
    # the worst layers are the ones with the lowest SQNR, worst first
    assert [r.sqnr_db for r in sample_report.worst_layers(3)] == sorted(r.sqnr_db for r in sample_report.layers)[:3]


def test_plots_are_accessible(sample_html):
    """Titles, descriptions, axis labels with units, a colour-blind-safe palette."""
    assert re.search(r"<title>qaudit: model\.onnx</title>", sample_html)
    for pid, svg in svgs(sample_html).items():
        assert f'role="img" aria-labelledby="{pid}-t {pid}-d"' in svg, pid
        assert re.search(rf'<title id="{pid}-t">[^<]+</title><desc id="{pid}-d">[^<]+</desc>', svg), pid
        labels = re.findall(r'class="alabel">([^<]+)</text>', svg)
        assert len(labels) == 2, pid
        colours = set(re.findall(r'(?:stroke|fill)="(#[0-9A-Fa-f]{6})"', svg)) - {"#ffffff", "#555555"}
        assert colours <= set(PALETTE), (pid, colours - set(PALETTE))
    plots = svgs(sample_html)
    units = {
        "weight-precision": "(fraction)",
        "act-precision": "(fraction)",
        "sqnr": "SQNR (dB)",
        "qmse": "(log10 scale)",
        "clip": "fraction of values",
        "decomposition": "fraction (clipping: of the isolated squared error",
    }
    for pid, unit in units.items():
        assert unit in "".join(re.findall(r'class="alabel">([^<]+)</text>', plots[pid])), pid
    assert "count (log10 scale)" in plots[next(p for p in plots if p.startswith("hist-"))]


def test_isolated_sqnr_is_said_to_be_missing(sample_report):
    """A report measured with --no-isolated (or an older report) has no isolated series."""
    rows = tuple(
        dataclasses.replace(r, sqnr_isolated_db=None, qmse_isolated=None, error_amplification=None)
        for r in sample_report.layers
    )
    sample_html = render([("m", dataclasses.replace(sample_report, layers=rows))], "html")
    sqnr = svgs(sample_html)["sqnr"]
    assert ISOLATED_MISSING in sqnr
    assert sqnr.count('<g class="series">') == 1  # accumulated only
    assert "SQNR isolated" not in sample_html


def test_isolated_sqnr_is_plotted_when_the_report_has_it(sample_html, sample_report):
    assert all(r.sqnr_isolated_db is not None for r in sample_report.layers if r.sqnr_db is not None)
    sqnr = svgs(sample_html)["sqnr"]
    assert ISOLATED_MISSING not in sample_html
    assert sqnr.count('<g class="series">') == 2 and ">isolated</text>" in sqnr
    assert "SQNR isolated dB" in sample_html


def test_layer_table(sample_html, sample_report):
    table = re.search(r'<table class="layers sortable" id="layers-0">.*?</table>', sample_html, flags=re.S).group(0)
    rows = re.findall(r'<tr data-i="(\d+)"( class=worst)?>', table)
    assert [int(i) for i, _ in rows] == [r.index for r in sample_report.layers]
    worst = {r.index for r in sample_report.worst_layers(3)}
    assert {int(i) for i, w in rows if w} == worst
    for r in sample_report.layers:
        assert r.name in table
    # sortable: a button per header, and the two presets
    assert (
        table.count('<th scope="col"') == table.count('<button type="button">') == 17
    )  # with isolated SQNR and its decomposition
    assert 'data-table="layers-0"' in sample_html and ">worst SQNR first</button>" in sample_html


def test_unmatched_listed(sample_html, sample_report):
    assert len(sample_report.unmatched) == 5
    assert "5 fp32 tensor(s) without a quantized twin" in sample_html
    for u in sample_report.unmatched:
        assert u.tensor in sample_html
        assert u.reason.replace("'", "&#x27;") in sample_html


def test_report_with_zero_unmatched_renders(sample_report):
    html = render([("m", dataclasses.replace(sample_report, unmatched=()))], "html")
    parse(html)
    assert "Unmatched tensors: none" in html and '<table class="unmatched"' not in html
    assert list(svgs(html)) == plot_ids([("m", sample_report)])


def test_report_with_other_unmatched_kinds_renders(sample_report):
    extra = (
        UnmatchedTensor("t_excl", "/fc2/Gemm", "Gemm", "excluded", "node excluded by --exclude"),
        UnmatchedTensor("t_<float>", "/soft/Max", "Softmax", "float-op", "ONNX Runtime does not quantize Softmax"),
    )
    html = render([("m", dataclasses.replace(sample_report, unmatched=sample_report.unmatched + extra))], "html")
    parse(html)
    assert "7 fp32 tensor(s) without a quantized twin" in html
    assert "t_&lt;float&gt;" in html and "t_<float>" not in html  # escaped


def test_old_report_without_histograms_renders(sample_report_json):
    old = json.loads(json.dumps(sample_report_json))
    for r in old["layers"]:
        r.pop("histogram")
    html = render([("m", from_dict(old))], "html")
    parse(html)
    assert "No histograms in this report" in html
    assert list(svgs(html)) == LAYER_PLOT_IDS


def test_report_with_infinite_sqnr_and_no_weights_renders(sample_report):
    """Edge cases: SQNR +inf (no error) cannot be drawn and is named; plots without data are left out."""
    rows = tuple(
        dataclasses.replace(
            r,
            **{
                k: None
                for k in (
                    "w_min",
                    "w_max",
                    "w_range",
                    "w_precision",
                    "fold_w_min",
                    "fold_w_max",
                    "fold_w_range",
                    "fold_w_precision",
                    "w_sqnr_db",
                    "w_qmse",
                )
            },
            **({"sqnr_db": float("inf"), "qmse": 0.0} if r.index == 0 else {}),
        )
        for r in sample_report.layers
    )
    html = render([("m", dataclasses.replace(sample_report, layers=rows))], "html")
    parse(html)
    plots = svgs(html)
    assert "weight-range" not in plots and "weight-precision" not in plots
    assert "Not drawn (no layer has these values): Weight range" in html
    assert "∞ (no error), not drawn: #0" in plots["sqnr"]
    assert "0 (no error), not drawn: #0" in plots["qmse"]


def test_overlay_of_two_reports(sample_report, int8_report):
    """The compare view: both models on the same axes, one legend entry per model and quantity."""
    pair = [("uint8 weights", sample_report), ("int8 weights", int8_report)]
    html = render(pair, "html")
    parse(html)
    plots = svgs(html)
    worst = [f"hist-0-{r.index}" for r in sample_report.worst_layers(3)] + [
        f"hist-1-{r.index}" for r in int8_report.worst_layers(3)
    ]
    assert list(plots) == LAYER_PLOT_IDS + worst == plot_ids(pair)
    for pid in LAYER_PLOT_IDS:
        svg = plots[pid]
        legend = re.search(r'<g class="legend">.*?</g>', svg, flags=re.S).group(0)
        n = svg.count('<g class="series">')
        assert n % 2 == 0 and n >= 2, pid
        assert legend.count(">uint8 weights: ") == legend.count(">int8 weights: ") == n // 2, pid
    assert int8_report.settings["weight_type"] == "int8"
    assert "weights int8 per-tensor" in html and "weights uint8 per-tensor" in html
    assert 'id="layers-0"' in html and 'id="layers-1"' in html
    assert html.count("<h3>uint8 weights</h3>") == 3 and html.count("<h3>int8 weights</h3>") == 3
    assert "<title>qaudit: uint8 weights vs int8 weights</title>" in html


def test_render_html_needs_a_report():
    with pytest.raises(ConfigError, match="empty"):
        render([], "html")


# ------------------------------------------------------------ CLI


def test_html_to_stdout_puts_the_table_on_stderr(run_cli, sample_run):
    p = run_cli("report", sample_run.json_path, "--html", "-")
    assert p.returncode == 0, p.stderr
    assert p.stdout == sample_run.html_path.read_text(encoding="utf-8")
    assert "Model outputs" in p.stderr


def test_report_html_refuses_to_overwrite_its_input(run_cli, sample_run, tmp_path):
    saved = tmp_path / "r.json"
    saved.write_bytes(sample_run.json_path.read_bytes())
    p = run_cli("report", saved, "--html", saved)
    assert p.returncode == 2 and "input report" in p.stderr and "Traceback" not in p.stderr
    assert saved.read_bytes() == sample_run.json_path.read_bytes()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--json", "-", "--html", "-"], "stdout"),
        (["--json", "{d}/same", "--html", "{d}/same"], "different paths"),
        (["--worst", "-1"], "--worst"),
    ],
)
def test_html_output_conflicts_are_user_errors(run_cli, tmp_path, extra, needle):
    args = [a.format(d=tmp_path) for a in extra]
    p = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, *args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_html_rendering_imports_no_onnx(sample_run, tmp_path, cli_env):
    """The HTML renderer works from the JSON alone: neither onnxruntime nor onnx is imported."""
    out = tmp_path / "r.html"
    code = (
        "import sys\n"
        "from qaudit.cli import main\n"
        "rc = main(['report', sys.argv[1], '--html', sys.argv[2], '--quiet'])\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(sample_run.json_path), str(out)],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
    assert out.read_bytes() == sample_run.html_path.read_bytes()
