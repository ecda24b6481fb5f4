"""Bad input must give exit code 2 and one clear line on stderr, never a traceback,
never a half-written output file, and never a modified model.

Every bad input is built in ``tmp_path`` from the bundled sample. Each run also
asks for ``--json`` and ``--output-model`` inside ``tmp_path``; afterwards the
whole ``tmp_path`` tree (hidden files included) must be byte-for-byte what it
was before the run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from ..conftest import SAMPLE, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL, sha256_file

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` (hidden ones too): file -> sha256, directory -> None."""
    return {str(p.relative_to(root)): (sha256_file(p) if p.is_file() else None) for p in sorted(root.rglob("*"))}


def assert_user_error(proc, *needles: str) -> str:
    """Exit 2, exactly one stderr line 'qaudit: error: ...' naming ``needles``, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("qaudit: error:"), line
    assert len(line) > len("qaudit: error: ") + 10, line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in: {line}"
    assert proc.stdout == ""
    return line


def first_calib() -> np.ndarray:
    a = np.load(SAMPLE_CALIB / "batch_000.npy")
    assert a.shape == (32, 1, 8, 8) and a.dtype == np.float32
    return a


def calib_dir(tmp: Path, name: str, array: np.ndarray | None = None, npz: dict | None = None) -> Path:
    d = tmp / name
    d.mkdir()
    if array is not None:
        np.save(d / "batch_000.npy", array)
    if npz is not None:
        np.savez(d / "batch_000.npz", **npz)
    return d


def model_with_nodes(path: Path, nodes) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])
    graph = helper.make_graph(nodes, "bad", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


# --------------------------------------------------------------- the cases
# Each builder gets a fresh input directory and returns (model, extra args,
# words the error line must contain).


def _missing_model(d):
    return d / "missing.onnx", [], ["missing.onnx", "not found"]


def _directory_as_model(d):
    (d / "model_dir.onnx").mkdir()
    return d / "model_dir.onnx", [], ["model_dir.onnx", "not a file"]


def _empty_model(d):
    (d / "empty.onnx").write_bytes(b"")
    return d / "empty.onnx", [], ["empty.onnx", "empty"]


def _text_model(d):
    (d / "notes.onnx").write_text("this is a text file, not an ONNX model\n", encoding="utf-8")
    return d / "notes.onnx", [], ["notes.onnx", "not a valid onnx"]


def _truncated_model(d):
    data = SAMPLE_MODEL.read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    return d / "truncated.onnx", [], ["truncated.onnx", "truncated"]


def _unknown_op_model(d):
    m = model_with_nodes(d / "unknown_op.onnx", [helper.make_node("NoSuchOp", ["input"], ["logits"], name="n0")])
    return m, [], ["unknown_op.onnx", "onnx.checker", "NoSuchOp"]


def _dangling_input_model(d):
    m = model_with_nodes(d / "dangling.onnx", [helper.make_node("Relu", ["nowhere"], ["logits"], name="n0")])
    return m, [], ["dangling.onnx", "onnx.checker", "nowhere"]


def _missing_calib(d):
    return None, ["--calib", d / "no_such_calib"], ["no_such_calib", "not found"]


def _empty_calib(d):
    return None, ["--calib", calib_dir(d, "empty_calib")], ["empty_calib", "empty"]


def _wrong_shape(d):
    c = calib_dir(d, "calib", np.zeros((4, 1, 9, 9), np.float32))
    return None, ["--calib", c], ["batch_000.npy", "shape", "(4, 1, 9, 9)"]


def _wrong_dtype(d):
    c = calib_dir(d, "calib", first_calib().astype(np.float64))
    return None, ["--calib", c], ["batch_000.npy", "float64", "float32"]


def _nan(d):
    a = first_calib().copy()
    a[3, 0, 4, 4] = np.nan
    return None, ["--calib", calib_dir(d, "calib", a)], ["batch_000.npy", "NaN"]


def _inf(d):
    a = first_calib().copy()
    a[7, 0, 1, 2] = -np.inf
    return None, ["--calib", calib_dir(d, "calib", a)], ["batch_000.npy", "Inf"]


def _nan_in_eval_only(d):
    a = first_calib().copy()
    a[0, 0, 0, 0] = np.nan
    return None, ["--calib", SAMPLE_CALIB, "--eval", calib_dir(d, "eval", a)], ["batch_000.npy", "NaN"]


def _npz_missing_key(d):
    c = calib_dir(d, "calib", npz={"pixels": first_calib()})
    return None, ["--calib", c], ["batch_000.npz", "input", "pixels"]


def _labels_short(d):
    np.save(d / "labels.npy", np.load(SAMPLE_LABELS)[:399])
    return None, ["--eval", SAMPLE_EVAL, "--labels", d / "labels.npy"], ["labels.npy", "399", "400"]


def _labels_long(d):
    np.save(d / "labels.npy", np.concatenate([np.load(SAMPLE_LABELS), [0]]))
    return None, ["--eval", SAMPLE_EVAL, "--labels", d / "labels.npy"], ["labels.npy", "401", "400"]


def _labels_missing(d):
    return None, ["--eval", SAMPLE_EVAL, "--labels", d / "labels.npy"], ["labels.npy", "not found"]


def _labels_float(d):
    np.save(d / "labels.npy", np.load(SAMPLE_LABELS).astype(np.float32))
    return None, ["--eval", SAMPLE_EVAL, "--labels", d / "labels.npy"], ["labels.npy", "integer"]


def _zip_named_npy(d):
    c = calib_dir(d, "calib", npz={"input": first_calib()})
    (c / "batch_000.npz").rename(c / "batch_000.npy")
    return None, ["--calib", c], ["batch_000.npy", ".npz archive", "rename it to .npz"]


def _npz_member_not_an_array(d):
    import zipfile

    c = calib_dir(d, "calib")
    with zipfile.ZipFile(c / "batch_000.npz", "w") as z:
        z.writestr("input", b"raw bytes, not .npy")
    return None, ["--calib", c], ["batch_000.npz", "member 'input'", "not a numpy array"]


def _npz_object_member(d):
    c = calib_dir(d, "calib", npz={"input": np.array([{"pixels": 1}], dtype=object)})
    return None, ["--calib", c], ["batch_000.npz", "member 'input'", "python objects"]


def _fifo_in_calib(d):
    import os

    c = calib_dir(d, "calib", first_calib())
    os.mkfifo(c / "batch_001.npy")
    return None, ["--calib", c], ["batch_001.npy", "FIFO", "regular file"]


def _labels_scores(d):
    scores = np.random.default_rng(0).dirichlet(np.ones(10), size=400).astype(np.float32)
    np.save(d / "labels.npy", scores)
    return (
        None,
        ["--eval", SAMPLE_EVAL, "--labels", d / "labels.npy"],
        ["labels.npy", "not one-hot", "float32[400, 10]"],
    )


def _labels_zip(d):
    np.savez(d / "labels.npz", labels=np.load(SAMPLE_LABELS))
    (d / "labels.npz").rename(d / "labels.npy")
    return None, ["--eval", SAMPLE_EVAL, "--labels", d / "labels.npy"], ["labels.npy", ".npz archive", "np.save"]


def _batch_axis_unknown_input(d):
    return None, ["--batch-axis", "inptu=1"], ["--batch-axis", "inptu", "did you mean 'input'"]


def _batch_axis_out_of_range(d):
    return None, ["--batch-axis", "input=4"], ["batch axis 4", "input", "out of range"]


def _qoperator_16_bit(d):
    return (
        None,
        ["--format", "qoperator", "--activation-type", "uint16"],
        ["activation_type uint16", "QDQ", "--format qdq"],
    )


def _qoperator_4_bit(d):
    return None, ["--format", "qoperator", "--weight-type", "int4"], ["weight_type int4", "QDQ", "--format qdq"]


CASES = {
    "missing-model": _missing_model,
    "directory-as-model": _directory_as_model,
    "empty-model": _empty_model,
    "text-file-model": _text_model,
    "truncated-model": _truncated_model,
    "checker-unknown-op": _unknown_op_model,
    "checker-dangling-input": _dangling_input_model,
    "missing-calib-dir": _missing_calib,
    "empty-calib-dir": _empty_calib,
    "wrong-shape": _wrong_shape,
    "wrong-dtype": _wrong_dtype,
    "nan": _nan,
    "inf": _inf,
    "nan-in-eval": _nan_in_eval_only,
    "npz-missing-key": _npz_missing_key,
    "labels-too-short": _labels_short,
    "labels-too-long": _labels_long,
    "labels-missing": _labels_missing,
    "labels-float": _labels_float,
    "zip-named-npy": _zip_named_npy,
    "npz-member-not-an-array": _npz_member_not_an_array,
    "npz-object-member": _npz_object_member,
    "fifo-in-calib": _fifo_in_calib,
    "labels-scores": _labels_scores,
    "labels-zip": _labels_zip,
    "batch-axis-unknown-input": _batch_axis_unknown_input,
    "batch-axis-out-of-range": _batch_axis_out_of_range,
    "qoperator-16-bit": _qoperator_16_bit,
    "qoperator-4-bit": _qoperator_4_bit,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, run_cli, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    outputs = tmp_path / "out"
    outputs.mkdir()
    model, args, needles = CASES[case](inputs)
    if model is None:  # a data problem: audit a private copy of the good model
        model = shutil.copyfile(SAMPLE_MODEL, inputs / "model.onnx")
    if "--calib" not in args:
        args = ["--calib", SAMPLE_CALIB, *args]
    before = snapshot(tmp_path)
    sample_sha = sha256_file(SAMPLE_MODEL)

    proc = run_cli(model, *args, "--json", outputs / "report.json", "--output-model", outputs / "quantized.onnx")

    assert_user_error(proc, *needles)
    assert list(outputs.iterdir()) == []  # no report, no model, no hidden temp file
    assert snapshot(tmp_path) == before  # nothing created, nothing modified (the model included)
    assert sha256_file(SAMPLE_MODEL) == sample_sha


@pytest.mark.parametrize("flag", ["--json", "--output-model", "--html"])
def test_output_in_missing_directory(flag, run_cli, tmp_path):
    model = shutil.copyfile(SAMPLE_MODEL, tmp_path / "model.onnx")
    before = snapshot(tmp_path)
    target = tmp_path / "no_such_dir" / "out.file"
    t0 = time.perf_counter()
    proc = run_cli(model, "--calib", SAMPLE_CALIB, flag, target)
    elapsed = time.perf_counter() - t0
    assert_user_error(proc, "no_such_dir", "does not exist")
    assert snapshot(tmp_path) == before
    assert elapsed < 30  # it must not run the audit first (an audit of the sample takes ~1 s)


def test_output_directory_checked_before_any_data_is_read(run_cli, tmp_path):
    """With both a bad --json path and bad data, the --json error comes first: nothing ran."""
    a = first_calib().copy()
    a[0, 0, 0, 0] = np.nan
    calib = calib_dir(tmp_path, "calib", a)
    proc = run_cli(SAMPLE_MODEL, "--calib", calib, "--json", tmp_path / "no_such_dir" / "r.json")
    line = assert_user_error(proc, "no_such_dir", "does not exist")
    assert "NaN" not in line


def test_output_model_must_not_be_the_input_model(run_cli, tmp_path):
    model = shutil.copyfile(SAMPLE_MODEL, tmp_path / "model.onnx")
    before = snapshot(tmp_path)
    proc = run_cli(model, "--calib", SAMPLE_CALIB, "--output-model", model)
    assert_user_error(proc, "--output-model")
    assert snapshot(tmp_path) == before


def test_debug_shows_traceback(run_cli, tmp_path):
    outputs = tmp_path / "out"
    outputs.mkdir()
    proc = run_cli(
        tmp_path / "missing.onnx",
        "--calib",
        SAMPLE_CALIB,
        "--debug",
        "--json",
        outputs / "r.json",
        "--output-model",
        outputs / "q.onnx",
    )
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ModelError" in proc.stderr and "missing.onnx" in proc.stderr
    assert list(outputs.iterdir()) == []


def test_debug_on_bad_data_shows_traceback(run_cli, tmp_path):
    calib = calib_dir(tmp_path, "calib", first_calib().astype(np.float64))
    proc = run_cli(SAMPLE_MODEL, "--calib", calib, "--debug")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "DataError" in proc.stderr and "float64" in proc.stderr


def test_report_of_missing_or_invalid_json(run_cli, tmp_path):
    proc = run_cli("report", tmp_path / "nope.json")
    assert_user_error(proc, "nope.json", "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    assert_user_error(run_cli("report", bad), "bad.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": {"name": "something-else", "version": 1}}), encoding="utf-8")
    assert_user_error(run_cli("report", other), "other.json", "qaudit")


# ------------------------------------------------ output paths and saved reports


def test_json_must_not_overwrite_the_input_model(run_cli, tmp_path):
    model = shutil.copyfile(SAMPLE_MODEL, tmp_path / "model.onnx")
    before = sha256_file(model)
    proc = run_cli(model, "--calib", SAMPLE_CALIB, "--json", model, "--quiet")
    assert sha256_file(model) == before
    assert_user_error(proc)


def test_json_is_a_directory_leaves_no_output_model(run_cli, tmp_path):
    (tmp_path / "report_dir").mkdir()
    before = snapshot(tmp_path)
    proc = run_cli(
        SAMPLE_MODEL,
        "--calib",
        SAMPLE_CALIB,
        "--quiet",
        "--json",
        tmp_path / "report_dir",
        "--output-model",
        tmp_path / "q.onnx",
    )
    assert_user_error(proc, "report_dir")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["json-list", "json-string-format", "directory"])
def test_report_of_unreadable_input_is_a_user_error(kind, run_cli, tmp_path):
    target = tmp_path / "r.json"
    if kind == "json-list":
        target.write_text("[]", encoding="utf-8")
    elif kind == "json-string-format":
        target.write_text(json.dumps({"format": "qaudit-report"}), encoding="utf-8")
    else:
        target.mkdir()
    assert_user_error(run_cli("report", target), "r.json")


def test_json_and_output_model_must_differ(run_cli, tmp_path):
    before = snapshot(tmp_path)
    target = tmp_path / "out"
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--json", target, "--output-model", target)
    assert_user_error(proc, "different paths")
    assert snapshot(tmp_path) == before


def test_unknown_exclude_node_is_a_user_error(run_cli, tmp_path):
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--exclude", "no/such/node")
    assert_user_error(proc, "no/such/node")


def test_labels_outside_class_range(run_cli, tmp_path):
    bad = tmp_path / "labels.npy"
    np.save(bad, np.full(400, 10, dtype=np.int64))
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--eval", SAMPLE / "eval", "--labels", bad, "--quiet")
    assert_user_error(proc, "[0, 9]")


def test_corrupt_npy_message_gives_no_pickle_advice(run_cli, tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    (d / "a.npy").write_bytes(b"garbage")
    proc = run_cli(SAMPLE_MODEL, "--calib", d, "--quiet")
    assert_user_error(proc, "not a valid .npy")
    assert "allow_pickle" not in proc.stderr


def test_missing_required_option_is_one_line(run_cli):
    """--calib may come from the command line, a config file or QAUDIT_CALIB: exit 2, one line naming all three."""
    proc = run_cli(SAMPLE_MODEL)
    assert proc.returncode == 2
    assert proc.stderr == (
        "qaudit: error: no calibration data: give --calib DIR, or set 'calib' in a config file or QAUDIT_CALIB\n"
    )


def test_argparse_errors_are_one_line(run_cli):
    """argparse errors: exit 2, one line, no traceback."""
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--batch-size", "many")
    assert proc.returncode == 2
    assert proc.stderr == ("qaudit: error: argument --batch-size: invalid int value: 'many' (see qaudit --help)\n")


# ------------------------------------------------ graphs qaudit cannot prepare
# (issue 16 items 3 and 5: control flow holding layers, models quantized elsewhere)


def _quantized_elsewhere(d):
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": first_calib()[:4]}])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(SAMPLE_MODEL), str(d / "int8.onnx"), Reader())
    return d / "int8.onnx", None, ["int8.onnx", "is already quantized", "QuantizeLinear", "--quantized"]


def _varying_if(d):
    from ..models import if_model

    (d / "if.onnx").write_bytes(if_model(threshold=0.0).SerializeToString())
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    x[:8] += 2.0  # mean > 0: the then-branch; the rest mostly the else-branch
    x[8:] -= 2.0
    return d / "if.onnx", x, ["If node 'switch'", "2 Conv", "changes over the data", "true on 8, false on 8"]


def _loop_with_conv(d):
    from ..models import loop_model

    (d / "loop.onnx").write_bytes(loop_model().SerializeToString())
    return d / "loop.onnx", None, ["Loop node 'loop'", "1 Conv", "not support layers inside a Loop"]


GRAPH_CASES = {
    "quantized-elsewhere": _quantized_elsewhere,
    "varying-if": _varying_if,
    "loop-with-conv": _loop_with_conv,
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_graph_qaudit_cannot_prepare(case, run_cli, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    model, x, needles = GRAPH_CASES[case](inputs)
    calib = (
        SAMPLE_CALIB
        if case == "quantized-elsewhere"
        else calib_dir(inputs, "calib", x if x is not None else first_calib())
    )
    before = snapshot(tmp_path)
    proc = run_cli(model, "--calib", calib, "--json", outputs / "report.json", "--output-model", outputs / "q.onnx")
    assert_user_error(proc, *needles)
    assert list(outputs.iterdir()) == []
    assert snapshot(tmp_path) == before


def test_inlined_if_is_reported_in_the_terminal_and_json(run_cli, tmp_path):
    from ..models import if_model

    model = tmp_path / "if.onnx"
    model.write_bytes(if_model(threshold=-1e9).SerializeToString())
    proc = run_cli(model, "--calib", calib_dir(tmp_path, "calib", first_calib()), "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    note = "note: If node 'switch' replaced by its then_branch (2 nodes), because its condition 'cond' was true"
    assert note in " ".join(proc.stdout.split())
    (change,) = json.loads((tmp_path / "r.json").read_text())["settings"]["graph_changes"]
    assert change["kind"] == "inline_if" and "on all 32 calibration and evaluation samples" in change["detail"]


def test_negative_bn_variance_leaks_no_warning(run_cli, tmp_path):
    """The fold is refused with the reason in the report; numpy's RuntimeWarning does not reach stderr."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(SAMPLE_MODEL))
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    var = next(t for t in m.graph.initializer if t.name == bn.input[4])
    v = numpy_helper.to_array(var).copy()
    v[0] = -1.0
    var.CopyFrom(numpy_helper.from_array(v, var.name))
    model = tmp_path / "negvar.onnx"
    model.write_bytes(m.SerializeToString())
    proc = run_cli(model, "--calib", SAMPLE_CALIB, "--json", tmp_path / "r.json")
    assert "RuntimeWarning" not in proc.stderr and "invalid value" not in proc.stderr
    skipped = json.loads((tmp_path / "r.json").read_text())["folding"]["skipped"]
    assert {
        "bn": bn.name,
        "reason": f"var + epsilon <= 0 (channel 0: var -1, epsilon {next(a.f for a in bn.attribute if a.name == 'epsilon'):g}), so gamma / sqrt(var + epsilon) is not a number",
    } in skipped
