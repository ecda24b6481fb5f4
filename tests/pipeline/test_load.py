"""Loading: shape-inference variants, dynamic dims written as -1."""

import sys

import numpy as np
import onnx
import pytest

import qaudit
from qaudit.pipeline.load import infer_shapes, input_specs, load_model, untyped_outputs

from ..models import contrib_op_model


def test_contrib_op_needs_ort_symbolic_shape_inference(tmp_path):
    model = contrib_op_model()
    assert untyped_outputs(onnx.shape_inference.infer_shapes(model)) == ["g"]  # onnx cannot type Gelu
    inferred, variant, untyped = infer_shapes(model)
    assert variant == "onnxruntime symbolic" and untyped == []
    assert list(tmp_path.iterdir()) == []  # and nothing was written to the working directory


def test_contrib_op_model_is_quantized_after_the_right_inference(tmp_path):
    """Without a type for 'g' (onnx inference only), ORT does not calibrate it: g gets
    no QuantizeLinear and fc2 reads a float input."""
    onnx.save(contrib_op_model(), tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    np.save(tmp_path / "calib" / "x.npy", np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    report = qaudit.audit(qaudit.AuditConfig(model=tmp_path / "m.onnx", calib=tmp_path / "calib"))
    assert report.model["shape_inference"] == "onnxruntime symbolic"
    rows = {r.name: r for r in report.layers}
    assert rows["fc2"].has_weights and rows["fc2"].w_sqnr_db is not None
    assert rows["gelu"].quant_tensor is not None  # g got an encoding
    assert not report.unmatched and not report.notes[:-1]


def test_negative_dims_are_dynamic():
    model = contrib_op_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # Paddle2ONNX writes -1
    assert input_specs(model)[0].shape == (None, 8)


def test_sample_uses_plain_onnx_inference():
    from pathlib import Path

    lm = load_model(Path(__file__).resolve().parents[2] / "samples" / "digits" / "model.onnx")
    assert lm.shape_inference == "onnx" and lm.untyped == ()


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_variant_runs(variant):
    from qaudit.pipeline.load import SHAPE_INFERENCE_VARIANTS

    name, run = SHAPE_INFERENCE_VARIANTS[variant]
    assert run(contrib_op_model()).graph.node


def _custom_op_model() -> onnx.ModelProto:
    """An op no inference knows, so no variant can type its output::

    x -> my.ops.Foo -> y -> Relu -> z
    """
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Foo", ["x"], ["y"], domain="my.ops"), onnx.helper.make_node("Relu", ["y"], ["z"])],
        "custom",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4])],
    )
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("my.ops", 1)]
    )


def test_what_symbolic_inference_cannot_handle_is_a_reason(monkeypatch, tmp_path):
    """ORT's verdicts on a model (here its bare Exception) become the variant's reason."""
    from qaudit.errors import ModelError
    from qaudit.pipeline import load

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(load, "SHAPE_INFERENCE_VARIANTS", load.SHAPE_INFERENCE_VARIANTS[1:])
    with pytest.raises(ModelError) as e:
        infer_shapes(_custom_op_model(), "m.onnx")
    assert "onnxruntime symbolic: Incomplete symbolic shape inference" in str(e.value)
    assert "onnxruntime symbolic auto_merge: Incomplete symbolic shape inference" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_sympy_is_not_turned_into_a_note(monkeypatch):
    """sympy is a dependency: without it symbolic inference fails loudly instead of leaving 'g' unquantized."""
    monkeypatch.setitem(sys.modules, "onnxruntime.tools.symbolic_shape_infer", None)  # import raises ImportError
    with pytest.raises(ImportError):
        infer_shapes(contrib_op_model())


@pytest.mark.parametrize("error", [OSError("disk full"), AttributeError("renamed"), RuntimeError("bug")])
def test_unexpected_errors_in_symbolic_inference_propagate(monkeypatch, error):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", broken)
    with pytest.raises(type(error)):
        infer_shapes(contrib_op_model())


# ------------------------------------------------------ already quantized


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_a_model_quantized_by_ort_is_refused(fmt, tmp_path):
    """A model that ORT's own quantize_static made: the message counts what it found."""
    from collections import Counter
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from qaudit.errors import ModelError

    sample = Path(__file__).resolve().parents[2] / "samples" / "digits"
    x = np.load(sample / "calib" / "batch_000.npy")[:8]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.feeds, None)

    q = tmp_path / "quantized.onnx"
    quantize_static(
        str(sample / "model.onnx"),
        str(q),
        Reader(),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
    )
    ops = Counter(n.op_type for n in onnx.load(str(q)).graph.node)
    with pytest.raises(ModelError) as e:
        load_model(q)
    msg = str(e.value)
    assert msg.startswith(f"{q} is already quantized (")
    assert msg.endswith(
        f"pass the fp32 model it was made from as MODEL.onnx, and this one with --quantized {q} to audit it as it is"
    )
    top = "QuantizeLinear" if fmt == "qdq" else "QLinearConv"
    assert f"{ops[top]} {top}" in msg


def test_integer_ops_inside_a_subgraph_are_found():
    from onnx import TensorProto, helper

    from qaudit.pipeline.load import quantized_ops

    w = helper.make_tensor("w", TensorProto.INT8, [1, 1, 1, 1], [1])
    branch = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
            helper.make_node("ConvInteger", ["xq", "w"], ["y"], name="ci"),
        ],
        "b",
        [],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [w],
    )
    node = helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("out", TensorProto.INT32, None)])
    assert quantized_ops(helper.make_model(g)) == {"ConvInteger": 2, "DynamicQuantizeLinear": 2}
    assert quantized_ops(contrib_op_model()) == {}
