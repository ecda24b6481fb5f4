"""qaudit fix on the project's real models: a stated target met with a verified recipe, and the
emitted ORT arguments, given to a bare ``quantize_static`` on the emitted prepared model,
reproduce the fixed model's encodings byte for byte (docs/remedy.md's worked example)."""

from __future__ import annotations

import json
import os

import onnx
import pytest

from qaudit.cli.main import main

from ..test_realmodels import CI_SUBJECTS, SIZES, _builder, _require
from .test_fix import _scales

pytestmark = pytest.mark.realmodels

#: the stated targets (min output SQNR, dB): uint8 per-tensor gives rec 2.9 dB, MiniLM 4.4 dB; the benchmark
#: meets 20 dB on both (docs/performance.md), MiniLM at 20.0 dB exactly, so its CI case asks 15
TARGETS = {"rec": 20.0, "minilm": 15.0}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fix_meets_the_target_and_bare_quantize_static_reproduces_it(name, request, tmp_path, capsys):
    full = request.config.getoption("--realmodels-full") or os.environ.get("QAUDIT_REALMODELS_FULL") == "1"
    if not full and name not in CI_SUBJECTS:
        pytest.skip(f"{name} is in the full real-model run only: pytest --realmodels-full")
    _require(name)
    build = _builder()
    n_calib, n_eval = SIZES[name]
    d = build.build(tmp_path / "subjects", only=(name,), n_calib=n_calib, n_eval=n_eval)[name]
    model = build.model_path(d)
    out = tmp_path / "out"
    out.mkdir()
    rc = main(
        [
            "fix", str(model), "--calib", str(d / "calib"), "--eval", str(d / "eval"),
            "--min-output-sqnr", str(TARGETS[name]), "--recipe", str(out / "recipe.toml"),
            "--ort-args", str(out / "ort.json"), "--prepared-model", str(out / "prepared.onnx"),
            "--output-model", str(out / "fixed.onnx"), "--json", str(out / "report.json"), "--quiet",
            # no cost cap: on a loaded CI machine the default cap (5 audits' time) stops the search after fewer
            # sets, and rec's target may not be reached before it; the count (32 sets) is the same everywhere
            "--max-cost", "0",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    doc = json.loads((out / "report.json").read_text())
    before, after = (r["outputs"] for r in doc["runs"])
    assert min(o["sqnr_db"] for o in before) < 10
    assert min(o["sqnr_db"] for o in after) >= TARGETS[name]
    # the recipe as a config file passes the same gate
    again = out / "again.json"
    argv = [str(model), "--config", str(out / "recipe.toml"), "--calib", str(d / "calib"), "--eval", str(d / "eval")]
    assert main([*argv, "--json", str(again), "--quiet"]) == 0
    assert json.loads(again.read_text())["outputs"][0]["sqnr_db"] == pytest.approx(after[0]["sqnr_db"], rel=1e-9)
    # bare quantize_static with the emitted arguments on the emitted prepared model
    from onnxruntime.quantization import quantize_static

    from qaudit.remedy.recipe import decode_ort_arguments

    ort_doc = json.loads((out / "ort.json").read_text())
    cache = tmp_path / "cache.json"
    cache.write_text(json.dumps(ort_doc["calibration_cache"]))
    prepared = onnx.load(out / "prepared.onnx")
    kw = decode_ort_arguments(ort_doc, {i.name for i in prepared.graph.initializer})
    bare = tmp_path / "bare.onnx"
    quantize_static(str(out / "prepared.onnx"), str(bare), None, calibration_cache_path=str(cache), **kw)
    fixed = onnx.load(out / "fixed.onnx")
    assert _scales(fixed) and _scales(onnx.load(bare)) == _scales(fixed)
