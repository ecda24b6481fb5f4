"""Hostile input files (issue 16, item 14, beyond the data files): hand-edited and deeply nested
JSON reports and baselines, config files that are not UTF-8 text, and ONNX Runtime's own log
lines. Each is exit 2 with one line naming what is wrong; never exit 3, never ORT's colour codes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qaudit.renderers import FORMATS, render
from qaudit.report import ReportFormatError, from_dict

from ..conftest import REPO, SAMPLE_CALIB, SAMPLE_MODEL
from .test_bad_input import assert_user_error

BASELINE = REPO / "samples" / "digits" / "baseline.json"


def _edit(path, change):
    d = json.loads(BASELINE.read_text(encoding="utf-8"))
    change(d)
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


EDITS = {
    "sqnr-a-string": (lambda d: d["layers"][0].update(sqnr_db="high"), "layers[0].sqnr_db"),
    "name-a-list": (lambda d: d["outputs"][0].update(name=["logits"]), "outputs[0].name"),
    "histogram-counts-strings": (lambda d: d["layers"][0]["histogram"].update(counts=["1"]), "histogram.counts[0]"),
    "layers-an-object": (lambda d: d.update(layers={}), "layers must be an array"),
    "settings-format-null": (lambda d: d["settings"].update(format=None), "settings.format"),
    "folding-skipped-numbers": (lambda d: d["folding"].update(skipped=[1]), "folding.skipped[0]"),
    "meta-missing": (lambda d: d.pop("meta"), "'meta'"),
    "check-gate-a-number": (lambda d: d.update(gates={"checks": [{"gate": 1}]}), "gates.checks[0].gate"),
    "version-true": (lambda d: d["format"].update(version=True), "version"),
    "nested-meta": (lambda d: d["meta"].update(x=json.loads("[" * 500 + "]" * 500)), "meta nests deeper"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EDITS))
def test_a_hand_edited_report_or_baseline_is_one_line(case, run_cli, tmp_path):
    change, needle = EDITS[case]
    bad = _edit(tmp_path / "edited.json", change)
    assert_user_error(run_cli("report", bad), "edited.json", needle)
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--baseline", bad)
    assert_user_error(proc, "baseline", "edited.json", needle)


@pytest.mark.slow
def test_a_deeply_nested_report_is_one_line(run_cli, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(
        '{"format": {"name": "qaudit-report", "version": 2}, "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    assert_user_error(run_cli("report", deep), "deep.json", "nested too deeply")


#: a JSON value of each type but null (legal wherever a metric is missing), to put in place of each field
WRONG = ("text", 7, True, ["x"], {"a": 1})


def _leaves(d, path=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(d, list) and d:
        yield from _leaves(d[0], (*path, 0))
    if path:
        yield path


@pytest.mark.slow
def test_every_field_of_wrong_type_is_refused_or_rendered():
    """Each field of a real report (first row of each list), replaced by a value of each JSON type:
    :func:`from_dict` either refuses it (ReportFormatError naming the field) or every renderer renders it."""
    base = json.loads(BASELINE.read_text(encoding="utf-8"))
    base["gates"] = json.loads((REPO / "tests" / "renderers" / "data" / "edge.json").read_text())["gates"]
    assert base["gates"]["checks"]
    tried = accepted = 0
    for path in _leaves(base):
        for value in WRONG:
            d = copy.deepcopy(base)
            parent = d
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = value
            tried += 1
            try:
                report = from_dict(d, strict=True)
            except ReportFormatError as e:
                assert str(path[-1]) in str(e) or "report" in str(e) or "nests" in str(e), (path, value, e)
                continue
            accepted += 1
            for fmt in FORMATS:
                render(report, fmt)  # must not raise
    assert tried > 400 and accepted > 20


@pytest.mark.slow
@pytest.mark.parametrize(
    "content",
    [b'calib = "caf\xe9"\n', b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", SAMPLE_MODEL.read_bytes()[:400]],
    ids=["latin-1", "png", "onnx"],
)
def test_a_config_file_that_is_not_utf8_text_is_one_line(content, run_cli, tmp_path):
    cfg = tmp_path / "qaudit.toml"
    cfg.write_bytes(content)
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--config", cfg)
    line = assert_user_error(proc, "config file", "qaudit.toml")
    assert "\x1b" not in line


@pytest.mark.slow
def test_onnxruntime_prints_nothing_itself(run_cli, tmp_path):
    """A Conv whose weights need 3 input channels on a 1-channel input: it passes onnx.checker, ORT
    fails running it. ORT used to log the failure in red on stderr before qaudit's exit 3."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 6, 6])
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["logits"], name="conv")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path = tmp_path / "badconv.onnx"
    path.write_bytes(model.SerializeToString())
    proc = run_cli(path, "--calib", SAMPLE_CALIB, "--quiet")
    line = assert_user_error(proc, "ONNX Runtime cannot run", "kernel channels")
    assert "\x1b" not in proc.stderr and "[E:onnxruntime" not in line
