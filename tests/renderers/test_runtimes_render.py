"""The ``runtimes`` section (``--runtimes``) in the Markdown summary and the JUnit XML, as the terminal
shows it: the outputs in each runtime, the first divergent layer, each runtime, the per-layer table.

The section is written here by hand onto the committed digits report (no model runs), so every
cell's expected text follows from the numbers below."""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET

import pytest

from qaudit.renderers import render
from qaudit.report import Divergence, RuntimeInfo, RuntimeLayer, RuntimeOutput, Runtimes, from_json, to_json

SIM, OV = "ort vs ort-sim", "ort vs openvino"


@pytest.fixture(scope="module")
def three(digits):
    rt = Runtimes(
        runtimes=(
            RuntimeInfo("ort", "onnxruntime", "1.32.0", "CPUExecutionProvider", True),
            RuntimeInfo("ort-sim", "onnxruntime", "1.32.0", "CPUExecutionProvider", False),
            RuntimeInfo("openvino", "openvino", "2026.4.1", "CPU", True, layers_reason="an <odd> | reason"),
        ),
        tolerance_db=40.0,
        layers=(
            RuntimeLayer(
                "/conv|1", "t1", "Conv", "uint8",
                sqnr_db={"ort": 40.84, "ort-sim": 40.81, "openvino": 40.79},
                agreement_db={SIM: math.inf, OV: 61.26}, max_abs_diff={SIM: 0.0, OV: 0.01},
            ),
            RuntimeLayer(
                "/fc1/Gemm", "t2", "Gemm", "uint8 scale 0.01486 zero point 0",
                sqnr_db={"ort": 36.62, "ort-sim": 36.58},
                agreement_db={SIM: 77.04}, max_abs_diff={SIM: 0.02},
                not_measurable={"openvino": "renamed away"},
            ),
            RuntimeLayer(
                "/fc2/Gemm", "t3", "Gemm", "uint8",
                sqnr_db={"ort": 34.93, "ort-sim": 34.91, "openvino": 34.71},
                agreement_db={SIM: 67.9, OV: 37.25}, max_abs_diff={SIM: 0.0554, OV: 0.125},
            ),
        ),
        outputs=(
            RuntimeOutput(
                "logits",
                metrics={
                    "ort": {"sqnr_db": 34.93, "max_abs_error": 1.28, "top1_agreement": 1.0},
                    "ort-sim": {"sqnr_db": 34.91, "max_abs_error": 1.27, "top1_agreement": 0.9975},
                    "openvino": {"sqnr_db": 34.71, "max_abs_error": 1.31, "top1_agreement": 0.995},
                },
                agreement_db={SIM: 67.9, OV: 37.25},
                max_abs_diff={SIM: 0.0554, OV: 0.125},
            ),
        ),
        divergences=(Divergence(OV, "/fc2/Gemm", "Gemm", "uint8", 37.25),),
    )  # fmt: skip
    return dataclasses.replace(digits, runtimes=rt)


def _section(md: str) -> str:
    start = md.index("### Runtimes")
    return md[start : md.index("<details><summary>All ", start)]  # up to the checks block


def test_markdown_shows_the_outputs_the_divergence_every_runtime_and_the_layers(three):
    md = _section(render(three, "markdown"))
    lines = md.splitlines()
    assert "| output | runtime | SQNR dB | max \\|e\\| | top-1 | agree ort dB | max \\|diff\\| |" in lines
    assert "| `logits` | `ort` | 34.9 | 1.28 | 100.00 |  |  |" in lines
    assert "|  | `ort-sim` | 34.9 | 1.27 | 99.75 | 67.9 | 0.0554 |" in lines
    assert "|  | `openvino` | 34.7 | 1.31 | 99.50 | 37.2 | 0.125 |" in lines
    assert "- ort vs openvino: first diverges at /fc2/Gemm (Gemm, uint8): agreement 37.2 dB \\< 40.0 dB" in lines
    assert "- ort vs ort-sim: every layer agrees to 40.0 dB or more" in lines
    assert "- ort-sim: onnxruntime 1.32.0 on CPUExecutionProvider, optimizations off" in lines
    assert "- openvino: openvino 2026.4.1 on CPU; outputs only: an \\<odd> \\| reason" in lines  # escaped
    assert "| layer | op | ort dB | ort-sim dB | openvino dB | agree ort vs ort-sim | agree ort vs openvino |" in lines
    assert "| `/conv\\|1` | `Conv` | 40.8 | 40.8 | 40.8 | ∞ | 61.3 |" in lines
    assert "| `/fc1/Gemm` | `Gemm` | 36.6 | 36.6 | n/m | 77.0 | n/m |" in lines  # not measured in openvino
    assert "| `/fc2/Gemm` | `Gemm` | 34.9 | 34.9 | 34.7 | 67.9 | 37.2 ◀ |" in lines  # the first divergent layer
    assert md.count("<details>") == md.count("</details>") == 1


def test_junit_adds_a_suite_without_cases_holding_the_runtimes(three, digits):
    root = ET.fromstring(render(three, "junit"))
    plain = ET.fromstring(render(digits, "junit"))
    assert root.attrib == plain.attrib  # the totals: the same test cases
    (suite,) = [s for s in root.iter("testsuite") if s.get("name") == "qaudit.runtimes"]
    assert suite.get("tests") == "0" and suite.findall("testcase") == []
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {
        "model": three.model["path"],
        "runtimes": "ort, ort-sim, openvino",
        "runtime[ort]": "onnxruntime 1.32.0 on CPUExecutionProvider",
        "runtime[ort-sim]": "onnxruntime 1.32.0 on CPUExecutionProvider, optimizations off",
        "runtime[openvino]": "openvino 2026.4.1 on CPU; outputs only: an <odd> | reason",
        "divergence[ort vs openvino]": "first diverges at /fc2/Gemm (Gemm, uint8): agreement 37.2 dB < 40.0 dB",
        "divergence[ort vs ort-sim]": "every layer agrees to 40.0 dB or more",
    }
    out = suite.find("system-out").text.splitlines()
    assert out[1].split() == ["output", "runtime", "SQNR", "dB", "max", "|e|", "top-1", "agree", "ort", "dB", "max",
                              "|diff|"]  # fmt: skip
    assert out[4].split() == ["openvino", "34.7", "1.31", "99.50", "37.2", "0.125"]
    rows = {line.split()[0]: line.split()[1:] for line in out[7:]}
    assert rows["/fc1/Gemm"] == ["Gemm", "36.6", "36.6", "n/m", "77.0", "n/m"]
    assert rows["/fc2/Gemm"] == ["Gemm", "34.9", "34.9", "34.7", "67.9", "37.2", "◀"]
    assert [s.get("name") for s in plain.iter("testsuite") if s.get("name").endswith("runtimes")] == []


def test_every_format_shows_the_same_cells_and_rerenders_from_json(three):
    """The terminal, Markdown and JUnit show one table; a saved report re-renders the same."""
    term = render(three, "terminal")
    for lines in ("ort vs openvino: first diverges at /fc2/Gemm (Gemm, uint8): agreement 37.2 dB < 40.0 dB",
                  "openvino: openvino 2026.4.1 on CPU; outputs only: an <odd> | reason"):  # fmt: skip
        assert lines in term
    back = from_json(to_json(three))
    assert back.runtimes == three.runtimes
    for fmt in ("markdown", "junit", "terminal"):
        assert render(back, fmt) == render(three, fmt)
    assert "### Runtimes" not in render(dataclasses.replace(three, runtimes=None), "markdown")
