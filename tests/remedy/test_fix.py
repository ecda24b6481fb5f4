"""qaudit fix on models with a planted problem: the search finds the planted remedy, every
measurement is the deployed model's, and the recipe and ORT arguments reproduce the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qaudit.cli.main import main
from qaudit.gate import GateConfig
from qaudit.options import QuantConfig, audit_config
from qaudit.pipeline.audit import audit
from qaudit.remedy import search as S
from qaudit.remedy.sensitivity import Change, candidates, measure_one, workspace

from . import planted_fix as planted

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@pytest.fixture
def subject(tmp_path):
    def make(name):
        model = getattr(planted, name)()
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        return (
            path,
            planted.write_data(model, tmp_path / "calib", 64, 1),
            planted.write_data(model, tmp_path / "eval", 48, 2),
        )

    return make


def test_outlier_channel_gets_per_channel_weights_for_that_layer_only(subject):
    path, calib, ev = subject("outlier_channel_model")
    cfg = audit_config(path, calib, ev)
    result = S.fix(cfg, GateConfig({"min_output_sqnr": 25.0}))
    assert result.search.changes == (Change("per_channel", "conv1", "w1"),)
    assert result.before.outputs[0].sqnr_db < 21  # the planted problem
    assert result.after.outputs[0].sqnr_db > 35
    assert result.quant.overrides == {"tensors": {"w1": {"per_channel": True}}}
    assert result.quant.exclude == ()
    # the search's first measurement (no change) is the before audit's output, to the last bit of the sums
    base = result.search.baseline
    assert base.changes == ()
    assert base.outputs[0].sqnr_db == pytest.approx(result.before.outputs[0].sqnr_db, rel=1e-12)
    # and the chosen set's measurement is the verifying audit's
    assert result.search.measured.outputs[0].sqnr_db == pytest.approx(result.after.outputs[0].sqnr_db, rel=1e-12)


def test_a_layer_no_precision_saves_is_left_in_float_alone(subject):
    path, calib, ev = subject("float_only_model")
    cfg = audit_config(path, calib, ev)
    result = S.fix(cfg, GateConfig({"min_output_sqnr": 25.0}))
    assert result.search.changes == (Change("float_node", "huge"),)
    assert result.quant.exclude == ("huge",)
    assert result.quant.overrides is None
    by = {o.name: o for o in result.after.outputs}
    assert by["y1"].sqnr_db == math.inf  # nothing quantized on its path
    assert by["y2"].sqnr_db == pytest.approx({o.name: o for o in result.before.outputs}["y2"].sqnr_db, rel=1e-12)
    # 16 bits everywhere on huge's path does not save it (that is why it is the planted float node)
    trail = {frozenset(m.changes): m for m in result.search.trail}
    sixteen = [m for k, m in trail.items() if any(c.kind == "tensor_16bit" and c.node == "huge" for c in k)]
    assert sixteen and all(not m.passed for m in sixteen if not any(c.kind == "float_node" for c in m.changes))


def test_a_measurement_is_the_audit_of_that_quantization(subject, tmp_path):
    """measure_one's outputs equal a full audit with the same exclusions and overrides (independent run)."""
    path, calib, ev = subject("outlier_channel_model")
    cfg = audit_config(path, calib, ev)
    record = {"calibrate": [QuantConfig(calibrate_method="minmax")]}
    before = audit(cfg, record=record)
    ws = workspace(record, cfg, GateConfig({"min_output_sqnr": 25.0}), tmp_path / "ws", "minmax")
    cands = candidates(before, record["folded"], alternative="minmax")
    kinds = {c.change.kind for c in cands}
    assert kinds == {"float_node", "tensor_16bit", "per_channel", "range"}
    changes = (Change("range", "conv2", "y", "minmax"), Change("tensor_16bit", "conv2", "w2", "uint16"))
    m = measure_one(ws, changes)
    minmax = [float(np.asarray(v).reshape(-1)[0]) for v in record["extra_ranges"][0]["y"].range_value]
    over = {"tensors": {"y": {"rmin": float(minmax[0]), "rmax": float(minmax[1])}, "w2": {"type": "uint16"}}}
    direct = audit(cfg.replace(quant=cfg.quant.__class__(overrides=over)))
    assert m.outputs[0].sqnr_db == pytest.approx(direct.outputs[0].sqnr_db, rel=1e-9)
    assert m.outputs[0].max_abs_error == pytest.approx(direct.outputs[0].max_abs_error, rel=1e-9)
    # the recorded minmax range is min..max of the calibration data, computed by hand on the fp32 graph
    # (one batch here, batches of the audit's size there: float32 sums in another order)
    import onnxruntime as ort

    x = np.load(calib / "data.npz")["x"]
    y = ort.InferenceSession(onnx.load(path).SerializeToString()).run(None, {"x": x})[0]
    assert minmax == pytest.approx([float(y.min()), float(y.max())], rel=1e-6)


def _run(*argv):
    return main([str(a) for a in argv])


def _scales(model) -> dict:
    """Every scale and zero point initializer of a quantized model, by name, as bytes."""
    return {
        i.name: numpy_helper.to_array(i).tobytes()
        for i in model.graph.initializer
        if i.name.endswith(("_scale", "_zero_point"))
    }


def test_cli_fix_writes_a_recipe_that_passes_and_ort_arguments_that_reproduce(subject, tmp_path, capsys):
    path, calib, ev = subject("float_only_model")
    out = tmp_path / "out"
    out.mkdir()
    rc = _run(
        "fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--min-output-sqnr", "y2=30",
        "--recipe", out / "recipe.toml", "--ort-args", out / "ort.json", "--prepared-model", out / "prepared.onnx",
        "--output-model", out / "fixed.onnx", "--json", out / "report.json", "--html", out / "report.html",
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "target met: 1 node(s) in float" in text and "node huge in float" in text
    recipe = tomllib.loads((out / "recipe.toml").read_text())
    assert recipe["exclude"] == ["huge"]
    assert recipe["gates"]["min_output_sqnr"] == 25.0
    assert recipe["gates"]["outputs"]["y2"]["min_output_sqnr"] == 30.0
    assert "calib" not in recipe and "eval" not in recipe
    # the before/after report is a multi-run report
    doc = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in doc["runs"]] == ["before", "after"]
    assert doc["runs"][0]["gates"]["passed"] is False and doc["runs"][1]["gates"]["passed"] is True
    assert "<html" in (out / "report.html").read_text().lower()
    # the recipe as a config file: the same gates pass
    assert (
        _run(path, "--config", out / "recipe.toml", "--calib", calib, "--eval", ev, "--json", out / "again.json") == 0
    )
    again = json.loads((out / "again.json").read_text())
    assert again["gates"]["passed"] is True
    assert again["settings"]["exclude"] == ["huge"]
    # bare quantize_static on the prepared model with the ORT arguments, decoded by hand
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    ort_doc = json.loads((out / "ort.json").read_text())
    kw = dict(ort_doc["quantize_static"])
    kw["quant_format"] = QuantFormat[kw["quant_format"]]
    kw["activation_type"] = QuantType[kw["activation_type"]]
    kw["weight_type"] = QuantType[kw["weight_type"]]
    kw["calibrate_method"] = CalibrationMethod[kw["calibrate_method"]]
    cache = tmp_path / "cache.json"
    cache.write_text(json.dumps(ort_doc["calibration_cache"]))
    quantize_static(
        str(out / "prepared.onnx"), str(tmp_path / "bare.onnx"), None, calibration_cache_path=str(cache), **kw
    )
    fixed, bare = onnx.load(out / "fixed.onnx"), onnx.load(tmp_path / "bare.onnx")
    assert _scales(fixed) and _scales(bare) == _scales(fixed)
    assert fixed.graph.SerializeToString() == bare.graph.SerializeToString()


def test_cli_fix_reproduces_overrides_with_16_bit_and_ranges(tmp_path):
    """The ORT arguments of a recipe with a 16-bit tensor and an explicit range (the mixed-precision
    fixer's converts included) reproduce the fixed model's encodings with bare quantize_static."""
    from qaudit.remedy.recipe import decode_ort_arguments, ort_arguments

    model = planted.outlier_channel_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    calib = planted.write_data(model, tmp_path / "calib", 32, 1)
    over = {"tensors": {"r1": {"type": "uint16"}, "y": {"rmin": -3.0, "rmax": 4.5}}}
    record: dict = {}
    audit(audit_config(path, calib, overrides=over, output_model=tmp_path / "q.onnx"), record=record)
    onnx.save(record["folded"], tmp_path / "prepared.onnx")
    doc = json.loads(
        json.dumps(
            ort_arguments(
                QuantConfig(overrides=over), record["also_exclude"], record["tensor_overrides"], record["ranges"], ""
            )
        )
    )
    # conv2 reads r1 at 16 bits, so ORT's fixer produces y at 16 bits too; the range applies to it as produced
    assert doc["quantize_static"]["extra_options"]["TensorQuantOverrides"]["y"] == [
        {"quant_type": "QUInt16", "rmin": -3.0, "rmax": 4.5}
    ]
    from onnxruntime.quantization import quantize_static

    cache = tmp_path / "cache.json"
    cache.write_text(json.dumps(doc["calibration_cache"]))
    weights = {i.name for i in record["folded"].graph.initializer}
    kw = decode_ort_arguments(doc, weights)
    quantize_static(
        str(tmp_path / "prepared.onnx"), str(tmp_path / "bare.onnx"), None, calibration_cache_path=str(cache), **kw
    )
    q, bare = onnx.load(tmp_path / "q.onnx"), onnx.load(tmp_path / "bare.onnx")
    assert any(numpy_helper.to_array(i).dtype == np.uint16 for i in q.graph.initializer)
    assert _scales(bare) == _scales(q)


def test_cli_fix_exit_1_prints_the_best_found_and_what_limits_it(subject, tmp_path, capsys):
    path, calib, ev = subject("float_only_model")
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--max-layers", "1",
              "--recipe", tmp_path / "r.toml")  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1
    assert "target NOT met" in text and "limited by: min_output_sqnr y1: sqnr_db " in text
    assert text.count("fix: target NOT met") == 1 and text.count("limited by:") == 1  # once (it was twice)
    assert (tmp_path / "r.toml").exists()  # the best set found is still written


def test_cli_fix_bad_input_is_exit_2_and_writes_nothing(subject, tmp_path, capsys):
    path, calib, ev = subject("float_only_model")
    assert _run("fix", path, "--calib", calib, "--eval", ev, "--min-layer-sqnr", "20") == 2
    assert "needs a target on the model outputs" in capsys.readouterr().err
    rc = _run("fix", path, "--calib", calib, "--min-output-sqnr", "20", "--recipe", tmp_path / "r.toml",
              "--ort-args", tmp_path / "no" / "such" / "dir.json")  # fmt: skip
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r.toml").exists()
    assert _run("fix", path, "--calib", calib, "--min-output-sqnr", "20", "--recipe", path) == 2
    assert "never overwrites its inputs" in capsys.readouterr().err


def test_verify_runs_on_any_executor_with_map(subject, tmp_path):
    """The unit of work pickles: a process pool measures what the local default measures."""
    from concurrent.futures import ProcessPoolExecutor

    from qaudit.remedy.sensitivity import verify

    path, calib, ev = subject("outlier_channel_model")
    cfg = audit_config(path, calib, ev)
    record = {"calibrate": [QuantConfig(calibrate_method="minmax")]}
    audit(cfg, record=record)
    ws = workspace(record, cfg, GateConfig({"min_output_sqnr": 25.0}), tmp_path / "ws", "minmax")
    sets = [(), (Change("per_channel", "conv1", "w1"),)]
    here = verify(ws, sets)
    with ProcessPoolExecutor(1) as pool:
        there = verify(ws, sets, pool)
    assert [m.outputs[0].sqnr_db for m in there] == [m.outputs[0].sqnr_db for m in here]
    assert [m.passed for m in here] == [False, True]


def test_hints_are_ranked_first_and_unmeasurable_kinds_skipped(subject):
    from types import SimpleNamespace as Hint

    path, calib, ev = subject("outlier_channel_model")
    cfg = audit_config(path, calib, ev)
    record: dict = {}
    report = audit(cfg, record=record)
    hints = [
        Hint(kind="upstream", node="conv2", tensor=None, detail="carried from conv1"),
        Hint(kind="per_channel", node="conv1", tensor="w1", detail="BN folding inflated the weight range"),
        Hint(kind="asymmetric", node="conv1", tensor="r1", detail="one-sided"),
        Hint(kind="per_channel", node="nope", tensor="w9", detail="a node the graph lacks"),
    ]
    got = candidates(report, record["folded"], hints, alternative="minmax")
    assert [c.change for c in got[:2]] == [
        Change("per_channel", "conv1", "w1"),
        Change("range", "conv1", "r1", "minmax"),
    ]
    assert got[0].why == "cause: BN folding inflated the weight range"
    assert all(c.change.node != "nope" for c in got)
    assert len({(c.change.kind, c.change.tensor or c.change.node) for c in got}) == len(got)  # no duplicates
    # without hints the outlier layer's weight still ranks above conv2's (precision 0.06 vs 0.76)
    plain = [
        c.change for c in candidates(report, record["folded"], alternative="minmax") if c.change.kind == "per_channel"
    ]
    assert plain[0] == Change("per_channel", "conv1", "w1")


def test_a_per_channel_override_below_opset_13_upgrades_like_per_channel(tmp_path):
    """QDQ per-channel needs DequantizeLinear's axis (opset 13): a per-channel override on an opset 12
    model is quantized on the upgraded graph, as --per-channel is (ORT would write a model it cannot load)."""
    model = planted.outlier_channel_model()
    model.opset_import[0].version = 12
    path = tmp_path / "m12.onnx"
    onnx.save(model, path)
    calib = planted.write_data(model, tmp_path / "calib", 16, 1)
    report = audit(audit_config(path, calib, overrides={"tensors": {"w1": {"per_channel": True}}}))
    assert any(c["kind"] == "opset_upgrade" for c in report.settings["graph_changes"])
    row = {r.name: r for r in report.layers}["conv1"]
    assert row.w_encoding.endswith("per-channel") and row.w_sqnr_db > 50


def test_fix_ranks_the_before_reports_causes_first_and_still_finds_the_planted_remedy(subject):
    path, calib, ev = subject("outlier_channel_model")
    result = S.fix(audit_config(path, calib, ev), GateConfig({"min_output_sqnr": 25.0}))
    # the before audit's cause: conv1's weight channels use a few % of the per-tensor range
    (cause,) = [h for h in S.cause_hints(result.before) if h.kind == "per_channel"]
    assert (cause.node, cause.tensor) == ("conv1", None)  # a cause names the layer, not its weight
    first = result.search.candidates[0]
    assert first.change == Change("per_channel", "conv1", "w1")
    assert first.score == math.inf and first.why.startswith("cause: conv1: its weight channels use ")
    assert result.search.changes == (Change("per_channel", "conv1", "w1"),)
    assert result.search.met
    # without hints the same search ranks by noise alone: no candidate is a cause's
    plain = S.fix(audit_config(path, calib, ev), GateConfig({"min_output_sqnr": 25.0}), hints=())
    assert not any(c.why.startswith("cause:") for c in plain.search.candidates)
    assert plain.search.changes == result.search.changes


def test_fix_on_the_planted_bn_folding_puts_the_causes_per_channel_weight_above_the_noise_ranking(tmp_path):
    from . import planted as cnn

    onnx.save(cnn.bn_inflated_depthwise(), tmp_path / "bn.onnx")
    for name, seed in (("calib", 1), ("eval", 2)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "x.npy", cnn.inputs(64, seed, small_channel=1 / 60))
    cfg = audit_config(tmp_path / "bn.onnx", tmp_path / "calib", tmp_path / "eval")
    result = S.fix(cfg, GateConfig({"min_output_sqnr": 30.0}))
    planted_fix = Change("per_channel", "conv1", "conv1.weight_bnfolded")
    first = result.search.candidates[0]
    assert first.change == planted_fix
    assert first.why == "cause: conv1: folding BatchNorm bn1 cut its weight channel precision from 0.65 to 0.09"
    assert result.search.changes == (planted_fix,) and result.search.met
    assert result.before.outputs[0].sqnr_db < 30 < result.after.outputs[0].sqnr_db
    # by noise alone the activation ranks first (the cause is what puts the weight ahead)
    plain = candidates(result.before, result.record["folded"], (), "minmax")
    assert plain[0].change.kind == "tensor_16bit" and plain[0].change.tensor == "a"


@pytest.mark.extra  # Pillow: the test and images extras
def test_cli_fix_recipe_records_the_preprocessing_and_class_names_of_an_image_folder(tmp_path, capsys):
    pytest.importorskip("PIL")
    from ..pipeline.test_sources import classifier, photos

    model = classifier(tmp_path / "m.onnx", hw=(16, 16))
    for i, name in enumerate(("cat", "dog")):
        photos(tmp_path / "imgs" / name, n=4, seed=i, sizes=((20, 30), (31, 17)))
    (tmp_path / "names.txt").write_text("dog\ncat\n")  # not the sorted order
    out = tmp_path / "out"
    out.mkdir()
    prep = "signed,resize=crop,short_side=18,channels=bgr,interpolation=bicubic"
    rc = _run(
        "fix", model, "--calib", tmp_path / "imgs", "--eval", tmp_path / "imgs", "--preprocess", prep,
        "--class-names", tmp_path / "names.txt", "--min-output-sqnr", "15", "--recipe", out / "recipe.toml",
        "--json", out / "fix.json",
    )  # fmt: skip
    assert rc == 0
    # the data line names the (temporary) folders: however long, the terminal may wrap it; compare its words
    assert "preprocess signed: short side to 18, centre crop 16x16 (bicubic), BGR" in " ".join(
        capsys.readouterr().out.split()
    )
    after = json.loads((out / "fix.json").read_text())["runs"][1]
    recipe = tomllib.loads((out / "recipe.toml").read_text())
    assert recipe["preprocess"] == {
        "preset": "signed", "size": [16, 16], "resize": "crop", "short_side": 18, "interpolation": "bicubic",
        "pad": 0, "channels": "bgr", "scale": 1 / 255, "mean": [0.5], "std": [0.5], "layout": "nchw",
    }  # fmt: skip
    assert recipe["class_names"] == str((tmp_path / "names.txt").resolve())
    # the recipe alone (no --preprocess, no --class-names) reads the images the same way
    rc = _run(
        model, "--config", out / "recipe.toml", "--calib", tmp_path / "imgs", "--eval", tmp_path / "imgs",
        "--json", out / "again.json",
    )  # fmt: skip
    assert rc == 0
    again = json.loads((out / "again.json").read_text())
    assert again["gates"]["passed"] is True
    assert again["data"]["preprocess"] == after["data"]["preprocess"]
    assert again["data"]["class_names"] == after["data"]["class_names"] == ["dog", "cat"]
    assert [o["sqnr_db"] for o in again["outputs"]] == [o["sqnr_db"] for o in after["outputs"]]
    assert [o["acc_fp32"] for o in again["outputs"]] == [o["acc_fp32"] for o in after["outputs"]]


@pytest.mark.parametrize(
    ("spec", "shape", "kind"),
    [
        ("imagenet", (None, 3, 224, 224), "image"),
        ("signed,resize=letterbox,pad=114,channels=bgr", (None, 32, 48, 3), "image"),
        ("raw,resize=none", (None, 1, None, None), "image"),
        ("rate=16000,resample=linear,mix=mean,hop=400", (None, 1600), "audio"),
    ],
)
def test_the_recipes_preprocess_table_reads_back_as_the_same_preprocessing(spec, shape, kind):
    from qaudit.pipeline.sources import preprocess as P
    from qaudit.remedy.recipe import recipe_toml

    build = P.image_recipe if kind == "image" else P.audio_recipe
    dtype = "uint8" if spec.startswith("raw") else "float32"
    used = build(P.parse(spec, "(test)"), shape, dtype, "calibration")
    # through the recipe's TOML, as the config file reads it back
    recipe = tomllib.loads(recipe_toml(QuantConfig(), GateConfig({}), {}, "", used.as_dict()))
    assert recipe["preprocess"] == P.keys_of(used.as_dict())
    assert build(P.check_table(recipe["preprocess"], "(recipe)"), shape, dtype, "calibration") == used


def test_an_executor_measuring_several_sets_at_once_changes_neither_the_trail_nor_the_result(subject):
    """``width`` > 1 (a Ray cluster's CPUs): the sets the next step may ask for are measured with the
    one it asks for; the trail (what was asked, in order), the budget and the result are the one-at-a-time search's."""
    from qaudit.remedy.sensitivity import LocalExecutor

    class Wide(LocalExecutor):
        width = 3
        calls: list = []

        def map(self, fn, workspaces, sets):
            sets = list(sets)
            self.calls.append(len(sets))
            return list(super().map(fn, workspaces, sets))

    for name in ("outlier_channel_model", "float_only_model"):
        path, calib, ev = subject(name)
        cfg = audit_config(path, calib, ev)
        one = S.fix(cfg, GateConfig({"min_output_sqnr": 25.0}))
        wide = Wide()
        Wide.calls = []
        got = S.fix(cfg, GateConfig({"min_output_sqnr": 25.0}), executor=wide)
        assert got.search.changes == one.search.changes and got.quant == one.quant
        assert [m.changes for m in got.search.trail] == [m.changes for m in one.search.trail]
        assert [m.outputs for m in got.search.trail] == [m.outputs for m in one.search.trail]
        assert max(Wide.calls) > 1 and sum(Wide.calls) > one.search.n_measured  # measured ahead
        assert len(Wide.calls) < one.search.n_measured  # in fewer rounds


def test_workers_measure_the_one_process_recipe_trail_and_numbers(subject, tmp_path, monkeypatch):
    """``workers=2`` (``--workers 2``): a process pool measures the sets the next step may ask for with the one
    it asks for; with the count cap only (``max_cost=0``: the cost cap counts wall time) the recipe, the trail
    and every measured number are one process's, to the last bit (repr: NaN rows compare equal too), and the
    workers leave no temporary file behind (the fix's folder is theirs)."""
    import tempfile

    from qaudit.remedy import sensitivity

    sizes: list = []

    class Counted(sensitivity.ProcessExecutor):
        def map(self, fn, workspaces, sets):
            sets = list(sets)
            sizes.append(len(sets))
            return super().map(fn, workspaces, sets)

    monkeypatch.setattr(sensitivity, "ProcessExecutor", Counted)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    gates = GateConfig({"min_output_sqnr": 25.0})
    for name in ("outlier_channel_model", "float_only_model"):
        path, calib, ev = subject(name)
        cfg = audit_config(path, calib, ev)
        one = S.fix(cfg, gates, max_cost=0)
        sizes.clear()
        two = S.fix(cfg, gates, max_cost=0, workers=2)
        assert two.search.changes == one.search.changes and two.quant == one.quant
        assert [m.changes for m in two.search.trail] == [m.changes for m in one.search.trail]
        assert repr([m.outputs for m in two.search.trail]) == repr([m.outputs for m in one.search.trail])
        assert repr(two.after.outputs) == repr(one.after.outputs) and two.search.minimal == one.search.minimal
        assert max(sizes) == 2 and len(sizes) < one.search.n_measured  # two at a time, in fewer rounds
        assert list(scratch.iterdir()) == []


def test_a_measurement_gives_ort_a_model_file_of_its_own(subject, tmp_path, monkeypatch):
    """ORT's quantize_static writes ``<model>-inferred.onnx`` beside the model file it is given and deletes it
    (docs/ort-quirks.md): two measurements at once from one workspace file raced (FileNotFoundError on MiniLM
    with --workers 2). Each measurement hands ORT a copy in its own folder, external data included."""
    import onnx.shape_inference

    path, calib, ev = subject("outlier_channel_model")
    cfg = audit_config(path, calib, ev)
    record = {"calibrate": [QuantConfig(calibrate_method="minmax")]}
    audit(cfg, record=record)
    ws = workspace(record, cfg, GateConfig({"min_output_sqnr": 25.0}), tmp_path / "ws", "minmax")
    onnx.save(
        onnx.load(ws.folded), ws.folded, save_as_external_data=True, location=ws.folded.name + ".data", size_threshold=0
    )
    written = []
    infer = onnx.shape_inference.infer_shapes_path
    monkeypatch.setattr(
        onnx.shape_inference, "infer_shapes_path", lambda a, b, *r, **k: (written.append(b), infer(a, b, *r, **k))[1]
    )
    m = measure_one(ws, (Change("per_channel", "conv1", "w1"),))
    assert m.error == "" and written
    assert all(Path(w).parent != ws.folded.parent for w in written)  # not beside the workspace's model
    assert sorted(p.name for p in ws.work.iterdir() if p.is_dir()) == []  # its folder went with it


def _where(ws, changes):
    """What a worker process sees (a ProcessExecutor task)."""
    import os
    import tempfile
    import time

    time.sleep(changes)
    return os.getpid(), tempfile.gettempdir()


def test_the_process_pool_is_reused_writes_into_the_fix_folder_and_stops_at_once_on_an_interrupt(tmp_path):
    import os
    import time
    from types import SimpleNamespace

    from qaudit.remedy.sensitivity import ProcessExecutor, Workspace

    ws = Workspace(tmp_path, *[SimpleNamespace()] * 4, (), (), (), None, None, None)
    with ProcessExecutor(2, tmp_path) as ex:
        first = list(ex.map(_where, [ws] * 2, [0.5, 0.5]))
        again = list(ex.map(_where, [ws] * 4, [0, 0, 0, 0]))
        processes = list(ex._pool._processes.values())
    pids = {p for p, _ in first + again}
    assert len(pids) == 2 and os.getpid() not in pids  # two processes, the same for every map
    assert {d for _, d in first + again} == {str(tmp_path)}  # the fix's folder
    assert not any(p.is_alive() for p in processes)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), ProcessExecutor(2, tmp_path) as ex:
        ex.map(_where, [ws] * 2, [60, 60])
        processes = list(ex._pool._processes.values())
        raise KeyboardInterrupt
    assert not any(p.is_alive() for p in processes) and time.perf_counter() - t0 < 30


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--workers", "0"], "workers from --workers: must be >= 1, not 0"),
        (["--workers", "-2"], "workers from --workers: must be >= 1, not -2"),
        (["--workers", "1.5"], "qaudit fix: error: argument --workers: invalid int value: '1.5'"),
        (["--workers", "two"], "qaudit fix: error: argument --workers: invalid int value: 'two'"),
        (["--workers", "2", "--ray-address", "auto"], "--workers 2 measures change sets in local processes"),
    ],
)
def test_bad_workers_are_exit_2(subject, tmp_path, capsys, argv, words):
    path, calib, ev = subject("float_only_model")
    try:
        rc = _run(
            "fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", *argv, "--json", tmp_path / "j"
        )
    except SystemExit as e:  # argparse's own
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("workers = 0\n", "workers in "),
        ("workers = 1.5\n", "must be an integer, not 1.5"),
        ('workers = "2"\n', "must be an integer, not '2'"),
        ("workers = true\n", "must be an integer, not True"),
    ],
)
def test_bad_workers_in_a_config_file_are_exit_2(subject, tmp_path, capsys, toml, words):
    path, calib, ev = subject("float_only_model")
    (tmp_path / "fix.toml").write_text(toml)
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--config", tmp_path / "fix.toml")
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_workers_from_a_config_file_reach_the_fix_and_the_flag_overrides_it(subject, tmp_path, monkeypatch, capsys):
    from qaudit.cli.fix import build_fix_parser
    from qaudit.cli.settings import OPTIONS_BY_NAME, resolve
    from qaudit.errors import ConfigError

    (tmp_path / "qaudit.toml").write_text("workers = 3\n")
    ns = vars(build_fix_parser().parse_args(["m.onnx"]))
    s = resolve("audit", {k: v for k, v in ns.items() if k in OPTIONS_BY_NAME}, {}, tmp_path)
    assert s["workers"] == 3 and s.sources["workers"].endswith("qaudit.toml")
    ns = vars(build_fix_parser().parse_args(["m.onnx", "--workers", "2"]))
    s = resolve("audit", {k: v for k, v in ns.items() if k in OPTIONS_BY_NAME}, {"QAUDIT_WORKERS": "4"}, tmp_path)
    assert s["workers"] == 2 and s.sources["workers"] == "--workers"
    assert resolve("audit", {}, {"QAUDIT_WORKERS": "4"}, tmp_path)["workers"] == 4
    assert resolve("audit", {}, {}, tmp_path / "none")["workers"] == 1
    # and the CLI hands it to fix()
    seen = {}

    def fake(cfg, gates, progress=None, **kw):
        seen.update(kw)
        raise ConfigError("stopped here")

    monkeypatch.setattr(S, "fix", fake)
    path, calib, ev = subject("float_only_model")
    monkeypatch.chdir(tmp_path)
    assert _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--no-progress") == 2
    assert seen["workers"] == 3 and "stopped here" in capsys.readouterr().err


def test_a_16_bit_set_below_opset_21_is_measured_on_the_graph_its_audit_prepares(subject, tmp_path):
    """ORT's quantizer upgrades an opset-12 graph itself for 16 bits, and the Softmax 12 -> 13 adapter's
    renamed output makes it refuse ("Only an existing tensor can be modified", docs/ort-quirks.md):
    a 16-bit set is measured on the graph qaudit prepares at opset 21, with its ranges, and equals the
    audit of that recipe."""
    path, calib, ev = subject("softmax_opset12_model")
    cfg = audit_config(path, calib, ev)
    record = {"calibrate": [QuantConfig(calibrate_method="minmax")]}
    audit(cfg, record=record)
    ws = workspace(record, cfg, GateConfig({"min_output_sqnr": 25.0}), tmp_path / "ws", "minmax")
    assert ws.opset == 12 and ws.upgraded is not None
    changes = (Change("tensor_16bit", "mm", "m", "uint16"),)
    m = measure_one(ws, changes)
    assert m.error == ""
    direct = audit(cfg.replace(quant=QuantConfig(overrides={"tensors": {"m": {"type": "uint16"}}})))
    assert m.outputs[0].sqnr_db == pytest.approx(direct.outputs[0].sqnr_db, rel=1e-9)
    # without that graph ORT refuses the set (what the search met on PP-OCR rec)
    plain = workspace(record, cfg, GateConfig({"min_output_sqnr": 25.0}), tmp_path / "ws0", "minmax", sixteen=False)
    assert plain.upgraded is None
    assert "Only an existing tensor can be modified, 's_intermediate'" in measure_one(plain, changes).error
    # a set with no 16-bit tensor stays on the graph as configured (opset 12)
    base = measure_one(ws, ())
    assert base.error == "" and base.outputs[0].sqnr_db == pytest.approx(audit(cfg).outputs[0].sqnr_db, rel=1e-12)


def test_a_graph_input_is_a_candidate_and_its_16_bits_beat_a_node_in_float(subject):
    path, calib, ev = subject("wide_input_model")
    cfg = audit_config(path, calib, ev)
    result = S.fix(cfg, GateConfig({"min_output_sqnr": 50.0}))
    assert result.before.outputs[0].sqnr_db < 45
    x16 = Change("tensor_16bit", "a", "a", "uint16")
    assert x16 in [c.change for c in result.search.candidates]
    assert x16 in result.search.changes and S.cost(result.search.changes)[0] == 0  # no node in float
    assert result.search.minimal and result.after.outputs[0].sqnr_db >= 50
    # 1-minimal: each change's removal was measured on the final set, and fails
    trail = {frozenset(m.changes): m for m in result.search.trail}
    for c in result.search.changes:
        assert not trail[frozenset(result.search.changes) - {c}].passed


def test_a_failing_layer_gate_gets_its_layers_remedy_and_the_fix_audits_again(subject):
    """The output target passes as quantized, the layer gate on conv1 does not: the verifying audit's
    failure adds the remedy of conv1's cause (its weight per channel) to the search (forced), and the
    second audit passes every gate."""
    from qaudit.gate import Threshold, evaluate

    path, calib, ev = subject("outlier_channel_model")
    gates = GateConfig({"min_output_sqnr": 15.0, "min_layer_sqnr": Threshold(None, (("conv1", 30.0),))})
    result = S.fix(audit_config(path, calib, ev), gates)
    assert evaluate(result.before, gates).failures[0].subject == "conv1"
    assert result.search.forced == (Change("per_channel", "conv1", "w1"),)
    assert result.search.changes == (Change("per_channel", "conv1", "w1"),)
    assert evaluate(result.after, gates).passed
    assert {r.name: r for r in result.after.layers}["conv1"].sqnr_db >= 30


def test_the_fix_section_says_which_changes_the_layer_gates_added(subject, capsys):
    path, calib, ev = subject("outlier_channel_model")
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "15", "--min-layer-sqnr", "conv1=30",
              "--no-progress")  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and text.count("1 change(s) added for the layer gates the verifying audit failed") == 1


def test_sets_ort_refuses_are_split_by_its_message_and_the_search_goes_on(subject, tmp_path):
    """On a workspace without the 16-bit graph, ORT refuses every set with a tensor at 16 bits (ORT
    quirk 63): the change its message names is marked refused with ORT's words, the others are found by
    halving, and the search measures the sets without them instead of stopping."""
    path, calib, ev = subject("softmax_opset12_model")
    cfg = audit_config(path, calib, ev)
    record = {"calibrate": [QuantConfig(calibrate_method="minmax")]}
    before = audit(cfg, record=record)
    ws = workspace(record, cfg, GateConfig({"min_output_sqnr": 90.0}), tmp_path / "ws", "minmax", sixteen=False)
    cands = candidates(before, record["folded"], alternative="minmax")
    sixteen = [c.change for c in cands if c.change.kind == "tensor_16bit"]
    assert Change("tensor_16bit", "sm", "s", "uint16") in sixteen
    result = S.search(ws, cands, budget=40)
    refused = dict(result.refused)
    assert set(refused) == set(sixteen)
    assert all("Only an existing tensor can be modified, 's_intermediate'" in why for why in refused.values())
    first = next(i for i, m in enumerate(result.trail) if m.error)
    later = [m for m in result.trail[first:] if not m.error]
    assert later and all(c.kind != "tensor_16bit" for m in later for c in m.changes)
    assert any(m.changes for m in later)  # sets of the other changes were measured after the refusals


def test_fix_takes_inputs_named_like_numpys_own_keywords(tmp_path, capsys):
    """Inputs named ``file`` and ``allow_pickle`` (hostile for ``np.savez(path, **feeds)``: a TypeError,
    and a keyword silently taken) reach the fix's measurements by name: the fix meets its target."""
    model = planted.float_only_model()
    rename = {"a": "file", "b": "allow_pickle"}
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
    for i in model.graph.input:
        i.name = rename.get(i.name, i.name)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)

    def write(folder, n, seed):  # an .npz keyed by those names (np.savez(**arrays) cannot write them)
        import zipfile

        rng = np.random.default_rng(seed)
        folder.mkdir()
        with zipfile.ZipFile(folder / "data.npz", "w") as z:
            for name in ("file", "allow_pickle"):
                with z.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, rng.normal(0, 1, (n, 16)).astype(np.float32))
        return folder

    calib, ev = write(tmp_path / "calib", 64, 1), write(tmp_path / "eval", 48, 2)
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--quiet", "--json", "-")
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert [c["node"] for c in json.loads(out.out)["fix"]["changes"]] == ["huge"]


def test_the_cost_cap_from_a_config_file_stops_the_search_and_says_so_once(subject, tmp_path, capsys, monkeypatch):
    """``max_cost = 2`` in a config file: the audit before and the verifying audit alone are 2 audits, so the
    search measures the baseline and stops there (without the 60 s floor, which a sub-second audit needs): exit 1,
    the JSON names the cap, the terminal says it once with how to lift it, and ``qaudit report`` says the same."""
    from functools import partial

    from qaudit.report import load_report

    monkeypatch.setattr(S, "search", partial(S.search, min_seconds=0.0))
    path, calib, ev = subject("float_only_model")
    (tmp_path / "fix.toml").write_text("max_cost = 2\n")
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--config", tmp_path / "fix.toml",
              "--json", tmp_path / "fix.json", "--no-progress")  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1
    fix = json.loads((tmp_path / "fix.json").read_text())["fix"]
    assert fix["stopped_by"] == "max_cost" and fix["max_cost"] == 2.0 and fix["budget"] == S.DEFAULT_BUDGET
    assert fix["cost_limit_seconds"] == pytest.approx(2 * fix["seconds"]["before"], rel=1e-12)
    assert fix["measurements"] == 1 and fix["met"] is False and fix["pruned"] is False and fix["minimal"] is False
    line = (
        f"limited by: the cost cap (--max-cost 2: 1 set measured in {fix['seconds']['search']:.1f} s); "
        "raise --max-cost or --max-measurements; the best set fails min_output_sqnr y1: sqnr_db "
    )
    assert line in text
    assert (
        f"1 measurements of at most 32, within 2x the audit before ({fix['cost_limit_seconds']:.1f} s); no set "
        "measured met the target; the cost cap (--max-cost 2: 1 set measured in" in text
    )
    # the verdict and what limits it, once each (qaudit fix printed them twice before)
    assert text.count("fix: target NOT met") == 1 and text.count("limited by:") == 1
    assert _run("report", tmp_path / "fix.json") == 1
    again = capsys.readouterr().out
    assert line in again and again.count("fix: target NOT met") == 1 and again.count("limited by:") == 1
    read = load_report(tmp_path / "fix.json").fix
    assert read == {k: v for k, v in fix.items() if k != "verification"}


def test_the_verdict_of_a_fix_that_meets_its_target_is_printed_once(subject, capsys):
    path, calib, ev = subject("float_only_model")
    assert _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--no-progress") == 0
    text = capsys.readouterr().out
    assert text.count("fix: target met: 1 node(s) in float") == 1 and "target met" not in text.replace(
        "fix: target met: 1 node(s) in float", "", 1)  # fmt: skip
    assert text.count("pruning complete") == 1 and "limited by" not in text


def test_minimal_and_max_cost_0_run_without_a_cost_cap(subject, tmp_path, capsys):
    path, calib, ev = subject("float_only_model")
    docs = {}
    for flags in (["--minimal"], ["--max-cost", "0"]):
        out = tmp_path / f"{flags[0]}.json"
        rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", *flags, "--json", out)
        assert rc == 0
        docs[flags[0]] = json.loads(out.read_text())["fix"]
    minimal, uncapped = docs["--minimal"], docs["--max-cost"]
    assert minimal["budget"] == S.MINIMAL_BUDGET and uncapped["budget"] == S.DEFAULT_BUDGET
    for fix in (minimal, uncapped):
        assert fix["max_cost"] is None and fix["cost_limit_seconds"] is None and fix["stopped_by"] is None
        assert fix["minimal"] is True and [c["node"] for c in fix["changes"]] == ["huge"]
    assert [m["changes"] for m in minimal["trail"]] == [m["changes"] for m in uncapped["trail"]]
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--max-cost", "1.5"], "max_cost from --max-cost: must be 0 (no cost cap) or at least 2"),
        (["--max-cost", "-1"], "max_cost from --max-cost: must be 0 (no cost cap) or at least 2"),
        (["--minimal", "--max-cost", "3"], "--minimal measures until the set is 1-minimal, with no cost cap"),
    ],
)
def test_bad_caps_are_exit_2(subject, tmp_path, capsys, argv, words):
    path, calib, ev = subject("float_only_model")
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", *argv, "--json", tmp_path / "j")
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "j").exists()


def test_the_fix_caps_are_not_audit_flags(subject, capsys):
    path, calib, ev = subject("float_only_model")
    with pytest.raises(SystemExit) as e:
        _run(path, "--calib", calib, "--max-cost", "3")
    assert e.value.code == 2 and "unrecognized arguments: --max-cost" in capsys.readouterr().err
