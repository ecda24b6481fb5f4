"""qaudit compare: structural alignment, the Comparison, its JSON/terminal/HTML forms and the CLI.

The real cross-framework sample (``samples/compare``: one trained network exported
by torch's TorchScript and dynamo exporters and by Keras through tf2onnx) is
compared once per session; most tests read that comparison or its saved reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import onnx
import pytest

from qaudit.comparison.align import LayerSig, align, signature_similarity, signatures
from qaudit.comparison.result import to_dict
from qaudit.comparison.run import CompareConfig, compare, compare_reports, cosine, guess_layout
from qaudit.errors import ConfigError
from qaudit.options import AuditConfig
from qaudit.report import from_json, to_json

from ..conftest import REPO, SAMPLE_CALIB, cli_env

COMPARE = REPO / "samples" / "compare"
EXPORTS = ("torch_script.onnx", "torch_dynamo.onnx", "keras_tf2onnx.onnx")

#: the digits network's weighted layers, in order: (module, signature) and each export's node name
ARCH = [
    ("block1.conv", (1, 16, (3, 3), 1)),
    ("block2.conv", (16, 32, (3, 3), 1)),
    ("dw.conv", (32, 32, (3, 3), 32)),
    ("pw.conv", (32, 32, (1, 1), 1)),
    ("fc1", (512, 64, (), 1)),
    ("fc2", (64, 10, (), 1)),
]
NODES = {
    "torch_script.onnx": [
        "/block1/conv/Conv",
        "/block2/conv/Conv",
        "/dw/conv/Conv",
        "/pw/conv/Conv",
        "/fc1/Gemm",
        "/fc2/Gemm",
    ],
    "torch_dynamo.onnx": [
        "node_Conv_55",
        "node_Conv_56",
        "node_Conv_58",
        "node_Conv_59",
        "node_Gemm_63",
        "node_linear_1",
    ],
    "keras_tf2onnx.onnx": [
        "Conv__41",
        "digits_cnn_1/block2_conv_1/BiasAdd",
        "digits_cnn_1/dw_conv_1/depthwise",
        "digits_cnn_1/pw_conv_1/BiasAdd",
        "digits_cnn_1/fc1_1/MatMul",
        "digits_cnn_1/fc2_1/MatMul",
    ],
}


@pytest.fixture(scope="module")
def sample_comparison():
    """The three exports audited with the same data and settings (accumulated error only, to stay fast)."""
    cfg = CompareConfig(
        inputs=tuple(COMPARE / e for e in EXPORTS),
        audit=AuditConfig(model=COMPARE / EXPORTS[0], calib=SAMPLE_CALIB, isolated=False),
    )
    return compare(cfg)


@pytest.fixture(scope="module")
def saved_reports(sample_comparison, tmp_path_factory):
    d = tmp_path_factory.mktemp("compare_reports")
    paths = []
    for label, rep in zip(sample_comparison.labels, sample_comparison.reports):
        p = d / (label.replace(".onnx", "") + ".json")
        p.write_text(to_json(rep), encoding="utf-8")
        paths.append(p)
    return paths


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "qaudit", "compare", *map(str, args)],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# ------------------------------------------------------------------ the sample


def test_sample_exports_are_what_the_readme_says():
    """Three real exports of one network: different producers, opsets, layouts, and BN handling."""
    info = {}
    for e in EXPORTS:
        m = onnx.load(str(COMPARE / e))
        ops = [n.op_type for n in m.graph.node]
        opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
        dims = [d.dim_value or None for d in m.graph.input[0].type.tensor_type.shape.dim]
        info[e] = (m.producer_name, opset, ops.count("BatchNormalization"), dims[1:])
    assert info["torch_script.onnx"] == ("pytorch", 17, 5, [1, 8, 8])
    assert info["torch_dynamo.onnx"][0] == "pytorch" and info["torch_dynamo.onnx"][2:] == (0, [1, 8, 8])
    assert info["keras_tf2onnx.onnx"] == ("tf2onnx", 15, 0, [8, 8, 1])


def test_alignment_pairs_every_layer_of_the_three_exports(sample_comparison):
    c = sample_comparison
    assert c.labels == EXPORTS
    assert len(c.layers) == len(ARCH)
    for row, names in zip(c.layers, zip(*(NODES[e] for e in EXPORTS))):
        assert row.layers == names
        assert row.confidence[0] is None
        assert all(x >= 0.6 for x in row.confidence[1:]), row
        assert row.method[1:] == ("signature+activation",) * 2
    for k in range(3):
        assert c.unaligned(k) == ()
    # the signature of every aligned layer is the known architecture's, in every export
    for rep in c.reports:
        sigs = signatures(rep)
        assert [(s.c_in, s.c_out, s.kernel, s.groups) for s in sigs] == [a[1] for a in ARCH]
    # same weights, same inputs: the torch exports' activations are identical
    assert all(r.activation[1] == pytest.approx(1.0, abs=1e-5) for r in c.layers)


def test_fp32_weights_of_aligned_layers_agree(sample_comparison):
    """One set of weights: the BN-folded weights agree to float tolerance across exporters. The
    Keras export keeps BN as Mul/Add after layers 1-4 (tf2onnx folds only the first, bias-free
    conv), so there its plain weights equal the torch model's plain weights."""
    ts, dyn, keras = sample_comparison.reports
    rows = [[r for r in rep.layers if r.has_weights] for rep in (ts, dyn, keras)]
    fields = ("min", "max", "range", "precision")
    for a, b, k in zip(*rows):
        for f in fields:
            assert getattr(b, f"fold_w_{f}") == pytest.approx(getattr(a, f"fold_w_{f}"), rel=1e-5, abs=1e-7), (
                a.name,
                f,
            )
        keras_ref = (
            "w_" if a.name in ("/block2/conv/Conv", "/dw/conv/Conv", "/pw/conv/Conv", "/fc1/Gemm") else "fold_w_"
        )
        for f in fields:
            assert getattr(k, f"w_{f}") == pytest.approx(getattr(a, keras_ref + f), rel=1e-5, abs=1e-7), (a.name, f)


def test_explanations_name_the_known_causes(sample_comparison):
    c = sample_comparison
    text = " | ".join(c.explanations)
    assert "different opsets: torch_script.onnx 17, keras_tf2onnx.onnx 15" in text
    assert "different input layouts: torch_script.onnx NCHW" in text and "keras_tf2onnx.onnx NHWC" in text
    first = c.layers[0].explanations
    assert any("torch_dynamo.onnx was exported with BatchNorm already folded" in e for e in first)
    assert any("keras_tf2onnx.onnx was exported with BatchNorm already folded" in e for e in first)
    assert any(
        "keeps this layer's BatchNorm unfolded but not as a BatchNormalization node" in e
        for e in c.layers[1].explanations
    )
    assert any("fed it the data transposed" in n for n in c.notes)
    # the two torch exports quantize identically; the Keras export differs where BN stayed Mul/Add
    plain = ("w_range", "w_precision")  # before folding: BN folded at export in the dynamo export only
    assert not any(any(m.differs[1] for m in r.metrics if m.metric not in plain) for r in c.layers)
    assert c.layers[1].metric("fold_w_range").differs == (False, False, True)


def test_comparison_json(sample_comparison):
    d = json.loads(json.dumps(to_dict(sample_comparison), allow_nan=False))
    assert d["format"] == {"name": "qaudit-comparison", "version": 1}
    assert [m["layout"] for m in d["models"]] == ["NCHW", "NCHW", "NHWC"]
    assert d["models"][2]["data_transposed"] is True
    row = d["layers"][1]
    assert row["layers"] == [NODES[e][1] for e in EXPORTS]
    m = row["metrics"]["fold_w_range"]
    assert m["differs"] == [False, False, True] and m["deltas"][0] == 0.0
    assert d["unaligned"] == {e: [] for e in EXPORTS}
    assert d["outputs"][0]["names"] == ["logits", "logits", d["outputs"][0]["names"][2]]


# ------------------------------------------------------------------ alignment (pure)


def _drop_layer(report, name):
    """The report without one weighted layer (as if the model had one layer fewer)."""
    layers = tuple(r for r in report.layers if r.name != name)
    return dataclasses.replace(report, layers=layers)


def test_a_removed_layer_leaves_the_rest_aligned(sample_comparison):
    ts, dyn, keras = sample_comparison.reports
    c = compare_reports([ts, _drop_layer(dyn, "node_Conv_58")])
    assert c.unaligned(0) == ("/dw/conv/Conv",)
    assert c.unaligned(1) == ()
    expected = [(a, b) for a, b in zip(NODES["torch_script.onnx"], NODES["torch_dynamo.onnx"]) if a != "/dw/conv/Conv"]
    assert [(a, b) for a, b, _ in c.pairs(1)] == expected
    # the other way round: an inserted layer
    c = compare_reports([_drop_layer(keras, "digits_cnn_1/pw_conv_1/BiasAdd"), ts])
    assert c.unaligned(1) == ("/pw/conv/Conv",)
    assert len(c.pairs(1)) == 5
    # unaligned rows sit where the layer is in the graph order
    assert [r.layers[1] for r in c.layers] == NODES["torch_script.onnx"]


def test_inserted_layer_of_equal_signature_is_resolved_by_activations():
    """Three equal convs vs two: order alone cannot tell which one is extra; activations can."""
    import numpy as np

    sig = dict(op_type="Conv", w_shape=(8, 8, 3, 3), kernel=(3, 3), groups=1, c_in=8, c_out=8)
    a = [LayerSig(i, f"a{i}", **sig) for i in range(3)]
    b = [LayerSig(i, f"b{i}", **sig) for i in range(2)]
    rng = np.random.default_rng(0)
    acts = [rng.normal(size=(2, 8, 4, 4)) for _ in range(3)]
    # b is a without its middle layer: b0 = a0, b1 = a2
    from qaudit.comparison.run import activation_similarity

    sim = activation_similarity(a, b, {f"a{i}": acts[i] for i in range(3)}, {"b0": acts[0], "b1": acts[2]})
    al = align(a, b, sim)
    assert [(p.a_name, p.b_name) for p in al.pairs] == [("a0", "b0"), ("a2", "b1")]
    assert al.unaligned_a == (1,)
    assert all(p.confidence == pytest.approx(1.0) for p in al.pairs)
    # without activations the order decides, with lower confidence
    al = align(a, b)
    assert len(al.pairs) == 2 and all(p.confidence < 1.0 for p in al.pairs)


def test_signature_similarity_modulo_layout():
    gemm = LayerSig(0, "g", "Gemm", w_shape=(64, 512), kernel=(), groups=1, c_in=512, c_out=64)
    matmul = LayerSig(0, "m", "MatMul", w_shape=(512, 64), kernel=(), groups=1, c_in=512, c_out=64)
    conv = LayerSig(0, "c", "Conv", w_shape=(64, 512, 1, 1), kernel=(1, 1), groups=1, c_in=512, c_out=64)
    assert signature_similarity(gemm, matmul) == 1.0
    assert signature_similarity(gemm, conv) is None
    old = LayerSig(0, "o", "Gemm")  # a report written before signatures
    assert signature_similarity(gemm, old) == 0.5


def test_cosine_tolerates_layout_transposes():
    import numpy as np

    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5))
    assert cosine(x, x.transpose(0, 2, 3, 1)) == pytest.approx(1.0)
    assert cosine(x, np.zeros((2, 7))) is None
    assert guess_layout(["x: float32[?,3,224,224]"]) == "NCHW"
    assert guess_layout(["x: float32[?,224,224,3]"]) == "NHWC"
    assert guess_layout(["x: float32[?,77]"]) is None


def test_pins_are_anchors_and_crossing_pins_fail(sample_comparison):
    ts, dyn, _ = sample_comparison.reports
    c = compare_reports([ts, dyn], pins=[("/dw/conv/Conv", "#5"), ("/pw/conv/Conv", None)])
    pairs = {a: (b, conf) for a, b, conf in c.pairs(1)}
    assert pairs["/dw/conv/Conv"] == ("node_Conv_59", 1.0)
    assert "/pw/conv/Conv" not in pairs
    assert next(r for r in c.layers if r.layers[0] == "/dw/conv/Conv").method[1] == "map"
    assert set(c.unaligned(1)) == {"node_Conv_58"}
    with pytest.raises(ConfigError, match="cross"):
        compare_reports([ts, dyn], pins=[("/block1/conv/Conv", "node_Gemm_63"), ("/fc2/Gemm", "node_Conv_55")])
    with pytest.raises(ConfigError, match="no weighted layer named"):
        compare_reports([ts, dyn], pins=[("/nope", "node_Conv_55")])


# ------------------------------------------------------------------ CLI


def test_cli_compares_two_json_reports_without_onnxruntime(saved_reports, tmp_path):
    """Saved reports align and compare with onnxruntime unimportable."""
    out = tmp_path / "c.json"
    html = tmp_path / "c.html"
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from qaudit.cli import main\n"
        f"rc = main(['compare', {str(saved_reports[0])!r}, {str(saved_reports[2])!r}, '--json', {str(out)!r}, "
        f"'--html', {str(html)!r}])\n"
        "assert 'onnxruntime' not in sys.modules or sys.modules['onnxruntime'] is None\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    assert [r["layers"] for r in d["layers"]] == [
        list(x) for x in zip(NODES["torch_script.onnx"], NODES["keras_tf2onnx.onnx"])
    ]
    assert all(r["method"][1] == "signature" for r in d["layers"])
    assert "Per-layer metrics: torch_script.json → keras_tf2onnx.json" in proc.stdout
    assert "Layer alignment" in proc.stdout
    page = html.read_text()
    assert '<h2 id="alignment">' in page and "Conv__41" in page


def test_cli_map_override(saved_reports, tmp_path):
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"pairs": [["/dw/conv/Conv", "node_Conv_59"], ["/pw/conv/Conv", None]]}))
    out = tmp_path / "c.json"
    proc = run(saved_reports[0], saved_reports[1], "--map", m, "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    row = next(r for r in d["layers"] if r["layers"][0] == "/dw/conv/Conv")
    assert row["layers"][1] == "node_Conv_59" and row["method"][1] == "map" and row["confidence"][1] == 1.0
    assert d["unaligned"]["torch_script.json"] == ["/pw/conv/Conv"]


def test_cli_three_way_table_per_layer(saved_reports):
    proc = run(*saved_reports, "--tolerance", "fold_w_range=0.5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("┃ metric ") >= 7  # one table per layer, plus the outputs
    assert "#4 /fc1/Gemm  (Gemm 512->64)" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["only_one.json"], "at least two"),
        (["{m}", "{m}"], "give --calib"),
        (["{r}", "{r}", "--tolerance", "bogus=1"], "METRIC=VALUE"),
        (["{r}", "{r}", "--map", "missing.json"], "--map file not found"),
        (["{r}", "missing.json"], "report not found"),
    ],
)
def test_cli_user_errors_exit_2(args, message, saved_reports):
    args = [a.format(m=COMPARE / EXPORTS[0], r=saved_reports[0]) for a in args]
    if args == ["only_one.json"]:
        args = [str(saved_reports[0])]
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_html_overlays_aligned_rows(sample_comparison):
    from qaudit.renderers import render
    from qaudit.renderers.compare_html import aligned_reports

    reps = aligned_reports(sample_comparison)
    for _label, rep in reps:
        assert [r.index for r in rep.layers] == list(range(len(ARCH)))
    page = render(sample_comparison, "html")
    assert page.count("<svg") >= 6 and "Known causes" in page


def test_terminal_rendering_two_models(sample_comparison):
    from qaudit.renderers import render

    c = compare_reports(sample_comparison.reports[:2], labels=["script", "dynamo"])
    text = render(c, "terminal", width=220)
    assert "script ↔ dynamo: 6 layer(s) aligned" in text
    assert "no aligned layer differs beyond tolerance" not in text  # plain w_range differs: BN folded at export
    assert "dynamo was exported with BatchNorm already folded" in text


def test_old_reports_without_signatures_still_align():
    import dataclasses

    base = from_json((REPO / "samples" / "digits" / "baseline.json").read_text())
    old = dataclasses.replace(  # a report written before the signature fields existed
        base,
        layers=tuple(
            dataclasses.replace(r, w_shape=None, kernel=None, groups=None, c_in=None, c_out=None) for r in base.layers
        ),
    )
    c = compare_reports([old, old])
    assert [a for a, _, _ in c.pairs(1)] == [b for _, b, _ in c.pairs(1)]
    assert any("no layer signatures" in n for n in c.notes)


# ------------------------------------------------------------------ rebuilding the sample (optional)


@pytest.mark.slow
@pytest.mark.extra  # compare-samples
@pytest.mark.skipif(
    not os.environ.get("REBUILD_SAMPLES"), reason="~30 s; set REBUILD_SAMPLES=1 (needs the compare-samples extra)"
)
def test_rebuild_sample_exports(tmp_path):
    """The sample script reproduces exports with the same weighted layers."""
    for mod in ("tensorflow", "tf2onnx", "onnxscript"):
        pytest.importorskip(mod)
    proc = subprocess.run(
        [sys.executable, str(REPO / "samples" / "make_compare_exports.py"), str(tmp_path)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for e in EXPORTS:
        got = [n.name for n in onnx.load(str(tmp_path / e)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        want = [n.name for n in onnx.load(str(COMPARE / e)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        assert got == want, e


# ------------------------------------------------------------------ audit options of every export


def test_batch_axis_and_overrides_from_the_settings_table_apply_to_every_export(tmp_path, monkeypatch):
    """--batch-axis and --overrides come from the settings table like an audit's (flags, config file)
    and apply to every export: the input's explicit range gives each report the encoding uint8 over [-1, 1]."""
    from qaudit.cli.main import _settings, build_compare_parser

    monkeypatch.chdir(tmp_path)  # no qaudit.toml of the tree
    (tmp_path / "ov.toml").write_text("[overrides.tensors.input]\nrmin = -1.0\nrmax = 1.0\n")
    exports = [COMPARE / e for e in EXPORTS[:2]]
    argv = [*map(str, exports), "--calib", str(SAMPLE_CALIB), "--batch-axis", "input=0", "--overrides", "ov.toml"]
    settings = _settings("audit", build_compare_parser().parse_args([*argv, "--no-isolated"]))
    cfg = dataclasses.replace(settings, values={**settings.values, "model": exports[0]}).audit_config()
    assert cfg.batch_axis == {"input": 0} and cfg.quant.overrides == {"tensors": {"input": {"rmin": -1.0, "rmax": 1.0}}}
    result = compare(CompareConfig(tuple(exports), cfg))
    for r in result.reports:
        row = r.layers[0]
        assert row.tensor == "input" and row.override == {"input": {"rmin": -1.0, "rmax": 1.0}}
        assert row.scale == pytest.approx(2 / 255) and row.zero_point == 128
        assert r.data["batch_axes"]["axes"] == {"input": 0}


@pytest.mark.parametrize(
    "extra, config, message",
    [
        (
            ["--calibrate-method", "percentile,entropy"],
            "",
            "audits every export with one calibration method, not percentile,entropy",
        ),
        ([], 'quantized = "q.onnx"\n', "does not apply to qaudit compare"),
        (
            ["--overrides", "{ov}"],
            "",
            "torch_dynamo.onnx: overrides.tensors: '/block1/relu/Relu_output_0' matches no tensor",
        ),
        (["--batch-axis", "x=0"], "", "a batch axis (--batch-axis, batch_axis) is given for input 'x'"),
        (["--output-model", "q.onnx"], "", "unrecognized arguments: --output-model"),
    ],
)
def test_cli_options_that_do_not_fit_a_comparison_exit_2(tmp_path, extra, config, message):
    ov = tmp_path / "ov.toml"
    ov.write_text(
        '[overrides.tensors."/block1/relu/Relu_output_0"]\nrmin = 0.0\nrmax = 1.0\n'
    )  # torch_script's name only
    cfg = tmp_path / "qaudit.toml"
    cfg.write_text(config)
    args = [a.format(ov=ov) for a in extra]
    exports = [COMPARE / e for e in EXPORTS[:2]]
    proc = run(
        *exports, "--calib", SAMPLE_CALIB, "--config", cfg, "--no-isolated", *args, "--json", tmp_path / "c.json"
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.json").exists()
