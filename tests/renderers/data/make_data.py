"""Rebuild the committed inputs of the golden tests (``tests/renderers/data/*.json``).

Run from the repository root::

    python tests/renderers/data/make_data.py

* ``digits.json``: ``samples/digits/baseline.json`` when this file was written, read
  and written again in the current format version (a copy, so refreshing the sample's
  baseline does not change the goldens);
* ``edge.json``: the same audit edited by hand into every case a renderer must
  show: a class and a regression output, failing, skipped and "nothing checked" gates against a baseline, metrics
  that are missing, an SQNR of +inf (no error), a layer renamed with characters
  that Markdown, XML and HTML must escape, layers added and removed since the
  baseline, every kind of unmatched tensor, a BatchNorm left unfolded and notes;
* ``compare.json``: the comparison of ``digits.json`` (as ``digits``) with
  ``edge.json`` (as ``edge``), as ``qaudit compare --json`` writes it.

Everything is derived from ``digits.json`` by pure functions (no model is run),
so the files are the same on every machine. The script only writes; the goldens
are refreshed by ``python -m pytest tests/renderers --update-goldens``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from qaudit.comparison.result import to_json as comparison_json  # noqa: E402
from qaudit.comparison.run import compare_reports  # noqa: E402
from qaudit.gate import GateConfig, Threshold, evaluate  # noqa: E402
from qaudit.report import OutputRow, UnmatchedTensor, from_json, to_json  # noqa: E402

#: the name of the renamed layer: a pipe, a backtick, angle brackets and an ampersand
ODD_NAME = "/fc2/Gemm|`x`<&>"


def edge_report(base):
    layers = []
    for r in base.layers:
        if r.name == "input":  # no error at all: SQNR +inf (written as null with qmse 0.0)
            r = dataclasses.replace(r, sqnr_db=math.inf, qmse=0.0, sqnr_isolated_db=math.inf, qmse_isolated=0.0)
        elif r.name == "/pool/MaxPool":  # metrics missing (e.g. a tensor without signal)
            r = dataclasses.replace(r, sqnr_db=None, qmse=None, sqnr_isolated_db=None, clip_fraction=None)
        elif r.name == "/dw/conv/Conv":  # worse than the baseline: regression gates fail
            r = dataclasses.replace(r, sqnr_db=r.sqnr_db - 6.5, qmse=r.qmse * 4.5, w_sqnr_db=math.inf, w_qmse=0.0)
        elif r.name == "/fc2/Gemm":  # renamed: removed from the baseline's point of view, and added
            r = dataclasses.replace(r, name=ODD_NAME)
        layers.append(r)
    logits = base.outputs[0]
    outputs = (
        dataclasses.replace(
            logits,
            kind="class",
            sqnr_db=logits.sqnr_db - 8.0,
            max_abs_error=0.9,
            rel_error=10 ** (-(logits.sqnr_db - 8.0) / 20),  # sqrt(sum e^2 / sum x^2) of that SQNR
            top1_agreement=0.9525,
            acc_int8=0.94,
            acc_drop_pct=100 * (logits.acc_fp32 - 0.94) / logits.acc_fp32,
        ),
        # a regression output: no class metrics (null), no labels
        OutputRow(
            name="features", kind="regression", qmse=1.5e-07, sqnr_db=61.25, max_abs_error=1.2e-3, rel_error=10**-3.0625
        ),
    )
    unmatched = base.unmatched + (
        UnmatchedTensor("t_excluded", "/fc1/Gemm", "Gemm", "excluded", "node excluded by --exclude"),
        UnmatchedTensor("t_<soft>", "/soft/Softmax", "Softmax", "float-op", "ONNX Runtime does not quantize Softmax"),
        UnmatchedTensor("t_removed", "/id/Identity", "Identity", "removed", "producer removed by graph optimization"),
        UnmatchedTensor("t_plain", "/add/Add", "Add", "not-quantized", "no QuantizeLinear was inserted for it"),
    )
    folding = {
        **base.folding,
        "skipped": [{"bn": "/head/bn/BatchNormalization", "reason": "its input has another consumer"}],
    }
    report = dataclasses.replace(
        base,
        model={**base.model, "path": "samples/digits/edited.onnx"},
        settings={**base.settings, "percentile": 99.99},
        layers=tuple(layers),
        outputs=outputs,
        unmatched=unmatched,
        folding=folding,
        notes=("the evaluation data is small: 400 samples",),
        gates=None,
    )
    config = GateConfig(
        {
            "min_layer_sqnr": Threshold(28.0, {"/fc*": 32.0, "/nomatch/*": 40.0}),
            "max_layer_qmse": Threshold(None, {"/nothing/*": 1e-3}),  # matches nothing: fails, says why
            "max_clip_fraction": Threshold(0.01, {"input": None}),  # off for one layer: a skipped check
            "min_weight_sqnr": 42.0,
            "min_output_sqnr": 32.0,
            "max_qce": 0.1,  # checks the class output only ("features" is a regression output)
            "max_output_rel_error": 0.01,  # the logits fail
            "min_acc_int8": 0.95,
            "max_layer_sqnr_drop": 1.0,
            "max_output_sqnr_drop": 1.0,
        }
    )
    return dataclasses.replace(report, gates=evaluate(report, config, base, "samples/digits/baseline.json"))


def main() -> None:
    digits = HERE / "digits.json"
    # the sample's baseline (a version 2 report) written in the current format version
    base = from_json((REPO / "samples" / "digits" / "baseline.json").read_text(encoding="utf-8"))
    digits.write_text(to_json(base), encoding="utf-8")
    edge = edge_report(base)
    (HERE / "edge.json").write_text(to_json(edge), encoding="utf-8")
    edge = from_json((HERE / "edge.json").read_text(encoding="utf-8"))  # as the goldens read it
    c = compare_reports([base, edge], labels=["digits", "edge"])
    (HERE / "compare.json").write_text(comparison_json(c), encoding="utf-8")


if __name__ == "__main__":
    main()
